"""``python -m appliance``: same as the ``appliance`` console script."""

import sys

from appliance.cli.main import main

sys.exit(main())
