"""Multi-task track: ``accelerate launch finetune/multitask.py --method sjmt data.datasets=[...]``."""
import sys

from abaw_ce.cli.multitask import main_multitask

if __name__ == "__main__":
    sys.exit(main_multitask())
