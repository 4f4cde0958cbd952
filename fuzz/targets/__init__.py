"""Fuzz targets. Each module defines:

- ``setup(workdir)``: one-time preparation (scratch files);
- ``seeds() -> list[bytes]``: valid inputs the fuzzer starts from;
- ``one_input(data: bytes)``: read ``data`` through layerparity's real reader;
  returns if it was accepted (and the target's invariants hold), raises an
  ``InputError`` if it was rejected; anything else is a crash;
- ``mutate(data, rng) -> bytes``: a structure-aware mutation (random engine and
  hypothesis smoke tests), and optionally ``custom_mutator`` for atheris.
"""
