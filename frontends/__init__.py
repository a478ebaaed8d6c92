"""Frontends: map a PyTorch module or an ONNX file onto the boundc IR."""
