"""layerparity: does every layer of a Caffe net and its TensorFlow port compute the same numbers?"""
__version__ = "0.1.0"
