"""asv benchmarks. asv imports every module here, so nothing heavy happens at import time and
no pytest file may live in this folder."""
