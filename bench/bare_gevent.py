"""The bare loop of ``bench/bare.py`` on gevent instead of OS threads.

It answers the issue's "threads or gevent pool" by measurement: the same consumer, client and
pool of 32, but every thread a greenlet and every socket cooperative. gevent must patch the
standard library before kombu, httpx or ``threading`` are imported, hence the import order.

Run by the benchmark as ``python -m bench.bare_gevent`` (``--systems bare,bare-gevent``).
"""

from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402  (after the patch, on purpose)

from bench.bare import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
