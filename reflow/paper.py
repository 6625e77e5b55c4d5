"""Published numbers of "Signal Collapse in One-Shot Pruning" (arXiv 2502.15790), as given in
shared/README.md, for side-by-side comparison in reports. ResNet-20 on the original CIFAR-10."""

from __future__ import annotations

import pandas as pd

SOURCE = "Saikumar & Varghese 2025, arXiv 2502.15790, Table 1 (ResNet-20, original CIFAR-10)"
DENSE_TOP1 = 91.57
#: Top-1 (%) by sparsity; columns are the paper's methods mapped to ours where we have them.
TABLE1 = pd.DataFrame(
    {
        "MP (mp)": [89.98, 88.44, 85.24, 78.79, 54.01, 11.79],
        "WF (wf_u)": [91.15, 90.23, 87.96, 81.05, 62.63, 11.49],
        "CBS (cbs_u)": [91.21, 90.58, 88.88, 81.84, 51.28, 13.68],
        "CHITA (chita_u)": [91.19, 90.60, 89.22, 84.12, 57.90, 15.60],
        "REFLOW (mp+reflow)": [91.25, 90.66, 89.49, 86.65, 78.50, 49.16],
    },
    index=pd.Index([0.4, 0.5, 0.6, 0.7, 0.8, 0.9], name="sparsity"),
)
#: Appendix C: normalised Hamming distance of MP and CHITA masks on ResNet-20 (%).
HAMMING_MP_CHITA_PERCENT = 0.0018

MOBILENET_SOURCE = "Table 1, MobileNetV1 on ImageNet"
MOBILENET_DENSE_TOP1 = 71.96
#: Top-1 (%) by sparsity, the paper's MobileNet rows (0.9 not reported).
MOBILENET = pd.DataFrame(
    {
        "MP (paper)": [69.16, 62.61, 41.94, 6.78, 0.11],
        "WF (paper)": [71.15, 68.91, 60.90, 29.36, 0.24],
        "CBS (paper)": [71.45, 70.21, 66.37, 55.11, 16.38],
        "CHITA (paper)": [71.50, 70.42, 67.30, 59.40, 29.78],
        "REFLOW (paper)": [71.59, 70.48, 67.83, 61.54, 43.37],
    },
    index=pd.Index([0.4, 0.5, 0.6, 0.7, 0.8], name="sparsity"),
)
#: Appendix C: normalised Hamming distance of MP and CHITA masks on MobileNet (%).
HAMMING_MP_CHITA_MOBILENET_PERCENT = 0.0095
