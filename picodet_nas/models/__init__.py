from .detector import PicoDet, build_model, flatten_outputs

__all__ = ["PicoDet", "build_model", "flatten_outputs"]
