import sys

from spinalnet_keras.cli import main

sys.exit(main())
