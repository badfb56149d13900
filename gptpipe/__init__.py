"""gptpipe: GPT-2 into a dialogue assistant on HH-RLHF, as a DVC pipeline."""

from gptpipe import kernels

# Before any module of ours imports torch and computes: ATen and MKL read their kernel choice once,
# at their first operation, so this is the one place every stage, command and test passes through
# early enough (gptpipe/kernels.py says why the portable kernels are the default).
kernels.pin()
