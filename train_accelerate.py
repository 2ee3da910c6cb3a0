"""The ``accelerate launch`` entry point of training; everything it runs lives in ``bioscan_clip.training``.

    accelerate launch train_accelerate.py --preset tiny --output_dir runs/tiny
    accelerate launch --multi_gpu --num_processes 2 train_accelerate.py --preset tiny --expect_processes 2 ...

Without a source checkout, ``accelerate launch -m bioscan_clip.apps.train ...`` runs the same. ``--help`` lists
every option with the preset's default.
"""

import sys

from bioscan_clip.apps.train import main

if __name__ == "__main__":
    sys.exit(main())
