"""``python -m stereonet_ros.visit``: see :mod:`stereonet_ros.visit.run`."""
import sys

from stereonet_ros.visit.run import main

sys.exit(main())
