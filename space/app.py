"""BIOSCAN-CLIP insect identification: the Hugging Face Space entry point.

The app is ``bioscan_clip.demo`` (installed with the package, see requirements.txt); this file only launches it, so
``python space/app.py --model DIR --keys DIR`` and ``bioscan-clip demo --model DIR --keys DIR`` are the same. On a
Space, ``--model`` and ``--keys`` come from the ``BIOSCAN_CLIP_MODEL`` / ``BIOSCAN_CLIP_KEYS`` variables.
"""

from __future__ import annotations

import logging

# Re-exported: the Space and tests build the app from here without launching it.
from bioscan_clip.demo import add_arguments, build_demo, launch, main, run

__all__ = ["add_arguments", "build_demo", "launch", "main", "run"]

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    raise SystemExit(main())
