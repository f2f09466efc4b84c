import sys

from fedhealth.agent.cli import main

sys.exit(main())
