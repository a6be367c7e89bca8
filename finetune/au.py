"""Stage 2, AU fine-tuning: ``accelerate launch finetune/au.py model.encoder=RUN/export data.datasets=[...]``."""
import sys

from abaw_ce.cli.au import main_au

if __name__ == "__main__":
    sys.exit(main_au())
