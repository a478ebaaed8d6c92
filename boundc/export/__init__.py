"""Export of compiled bound networks: an ONNX *certifier* (see :mod:`boundc.export.certifier`)."""

from boundc.export.certifier import Certifier, export_onnx

__all__ = ["Certifier", "export_onnx"]
