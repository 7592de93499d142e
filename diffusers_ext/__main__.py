import sys

from diffusers_ext.cli import main

sys.exit(main())
