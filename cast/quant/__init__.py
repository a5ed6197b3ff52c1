"""Weight-only quantization (pure torch): RTN, GPTQ with a fixed sparsity mask (its Hessians from the
shared layer-wise runner, cast.layerwise + cast.hessian), and torchao's RTN as a reference."""
from ..hessian import inverse_hessian_factor
from .apply import METHODS, quantize_targets, quantize_weight, set_weight_matrix, torchao_codes, weight_matrix
from .gptq import gptq_quantize
from .rtn import absmax_scales, dequantize, qmax_of, quantize_codes, rtn_quantize

__all__ = ["METHODS", "absmax_scales", "dequantize", "gptq_quantize", "inverse_hessian_factor", "qmax_of",
           "quantize_codes", "quantize_targets", "quantize_weight", "rtn_quantize", "set_weight_matrix",
           "torchao_codes", "weight_matrix"]
