"""Weight-only quantization (pure torch): RTN, GPTQ with a fixed sparsity mask, calibration Hessians."""
from .apply import METHODS, quantize_targets, quantize_weight, set_weight_matrix, torchao_codes, weight_matrix
from .calib import collect_linear_inputs
from .gptq import gptq_quantize, inverse_hessian_factor
from .rtn import absmax_scales, dequantize, qmax_of, quantize_codes, rtn_quantize

__all__ = ["METHODS", "absmax_scales", "collect_linear_inputs", "dequantize", "gptq_quantize",
           "inverse_hessian_factor", "qmax_of", "quantize_codes", "quantize_targets", "quantize_weight",
           "rtn_quantize", "set_weight_matrix", "torchao_codes", "weight_matrix"]
