"""ModelCache: open backends reused by (model, weights, options), against real Caffe and real TF."""

from __future__ import annotations

import shutil
import threading
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest

from layerparity import demo
from layerparity.backends.caffe import CaffeBackend
from layerparity.errors import CaffeError, InputError
from layerparity.model_cache import ModelCache, content_digest

DATA = Path(__file__).parent / "data" / "caffe"
FILES = demo.files()


def test_one_backend_per_file_until_the_file_changes(tmp_path):
    proto = tmp_path / "small.prototxt"
    shutil.copy(DATA / "small.prototxt", proto)
    with ModelCache() as models:
        with models.caffe(proto) as a:
            pid = a.worker_info()["pid"]
        with models.caffe(str(proto)) as b:  # str or Path: one key
            assert b is a and b.worker_info()["pid"] == pid
        assert models.opened == {"caffe": 1, "tf": 0}
        digest = content_digest(proto)
        proto.write_text(proto.read_text().replace('name: "small"', 'name: "small2"'))
        assert content_digest(proto) != digest
        with models.caffe(proto) as c:
            assert c is not a and c.alive
        assert not a.alive  # the stale one was closed
        with models.caffe(proto, options={"batch": 3}) as d:  # other options: another backend
            assert d is not c and d.input_shapes()["data"][0] == 3
        assert models.opened["caffe"] == 3 and len(models) == 2
    assert not c.alive and not d.alive  # closed with the cache


def test_weights_are_part_of_the_key(tmp_path):
    import caffe

    net = caffe.Net(str(DATA / "small.prototxt"), caffe.TEST)
    w1, w2 = tmp_path / "a.caffemodel", tmp_path / "b.caffemodel"
    net.save(str(w1))
    net.params["fc"][1].data[...] += 1
    net.save(str(w2))
    x = np.random.default_rng(0).standard_normal((2, 3, 12, 12)).astype(np.float32)
    with ModelCache() as models:
        with models.caffe(DATA / "small.prototxt", w1) as a:
            fa = a.forward(x, ["fc"])["fc"]
        with models.caffe(DATA / "small.prototxt", w2) as b:
            fb = b.forward(x, ["fc"])["fc"]
        assert a is not b and models.opened["caffe"] == 2
        np.testing.assert_allclose(fb - fa, 1, rtol=1e-5)


def test_a_backend_whose_worker_died_is_replaced():
    with ModelCache() as models:
        with models.caffe(DATA / "fcn.prototxt") as a, pytest.raises(CaffeError, match="layer 'conv2'"):
            a.forward(np.zeros((1, 3, 2, 2), np.float32), ["prob"])  # too small: Caffe aborts
        assert not a.alive
        with models.caffe(DATA / "fcn.prototxt") as b:
            assert b is not a and b.forward(np.zeros((1, 3, 12, 12), np.float32), ["prob"])["prob"].shape == (1, 2, 4, 4)


def test_live_models_by_identity_and_tf_files_by_content(tmp_path):
    port = demo.build_keras_port(demo.demo_weights(), buggy=False)
    keras_file = tmp_path / "port.keras"
    shutil.copy(FILES.keras, keras_file)
    with ModelCache() as models:
        with models.tf(port) as a, models.tf(port) as a2:
            assert a is a2
        with models.tf(demo.build_keras_port(demo.demo_weights(), buggy=False)) as b:
            assert b is not a  # another object, another backend
        with models.tf(keras_file) as c, models.tf(str(keras_file)) as c2:
            assert c is c2
        assert models.opened == {"caffe": 0, "tf": 3}


def test_least_recently_used_is_closed_beyond_max_open():
    with ModelCache(max_open=1) as models:
        with models.caffe(DATA / "small.prototxt") as a:
            pass
        with models.caffe(DATA / "fcn.prototxt") as b:
            pass
        assert not a.alive and b.alive and models.backends() == [b]
    with pytest.raises(InputError, match="max_open must be a positive integer"):
        ModelCache(max_open=0)


def test_open_sides_leases_paths_and_live_models_and_passes_the_rest_on():
    port = demo.build_keras_port(demo.demo_weights(), buggy=False)
    with ModelCache() as models, ExitStack() as held:
        c, w, t, kw = models.open_sides(held, FILES.prototxt, FILES.caffemodel, port,
                                        {"caffe_options": {"timeout": 100}, "tf_layout": "NHWC", "partial": True})
        assert isinstance(c, CaffeBackend) and w is None and t.framework == "tensorflow"
        assert kw == {"tf_layout": "NHWC", "partial": True}  # options consumed, the rest for compare_models
        c2, w2, t2, kw2 = models.open_sides(held, c, None, t, {})
        assert (c2, w2, t2) == (c, None, t)  # backends pass through
        missing = "/nonexistent/deploy.prototxt"
        assert models.open_sides(held, missing, None, port, {})[0] == missing  # compare_models reports it


def test_one_backend_is_never_driven_by_two_threads_at_once():
    x = np.zeros((2, 3, 12, 12), np.float32)
    errors: list[BaseException] = []
    with ModelCache() as models:
        def check() -> None:
            try:
                for _ in range(5):
                    with models.caffe(DATA / "small.prototxt") as cb:
                        assert cb.capture(x).names[-1] == "prob"
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=check) for _ in range(3)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert not errors and models.opened["caffe"] == 1


def test_a_backend_in_use_is_not_evicted_by_the_other_side_of_the_same_check():
    port = demo.build_keras_port(demo.demo_weights(), buggy=False)
    with ModelCache(max_open=1) as models, ExitStack() as held:
        c, _, t, _ = models.open_sides(held, FILES.prototxt, FILES.caffemodel, port, {})
        assert c.alive and t is not None and len(models) == 2  # both in use: over the limit for now
    assert len(models) == 0
