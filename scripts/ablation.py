#!/usr/bin/env python
"""The paper's Table 4 and queries ablation in miniature, on synthetic sets; writes RESULTS.md.

    python scripts/ablation.py --out ablation_output --results RESULTS.md   # the whole ablation
    python scripts/ablation.py --quick --out /tmp/ablation                 # every variant, a few steps

Same as ``maskformer-hf ablate``; flags: ``python scripts/ablation.py --help``.
"""

import sys

from maskformer_hf.ablation import main

if __name__ == "__main__":
    sys.exit(main())
