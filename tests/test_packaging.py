"""Packaging: what a user installs and what a packager builds from.

The wheel carries every subpackage and ``py.typed``, and a user's script type-checks against the
installed copy, not this source tree. The sdist carries what its tests need, and the core's tests
run from it. Without requests (the ``requests`` extra), the two front-ends built on it name the
extra to install, and the rest (core, ASGI middleware, gateway, demo) works as before.

Everything is built from a copy of this tree with ``python -m build --no-isolation``: no network,
the build tools come from the test extra.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("core", "proxy", "upstream", "asgi", "demo")
# The folders the sdist carries whole (MANIFEST.in), beside the package.
GRAFTED = ("tests", "benchmarks", "examples", "docs")
LEFT_OUT = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__",
                                  ".*_cache", "*.py[cod]", "*.png")

# Run first in a subprocess: requests and urllib3 look uninstalled (`pip install lbmiddleware`).
WITHOUT_REQUESTS = """\
import sys

class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("requests", "urllib3"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
"""


def run(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)


def files_under(folder: Path) -> set[str]:
    """The files below ``folder`` as ``/``-separated paths relative to it."""
    return {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()}


class Dists:
    def __init__(self, source: Path, sdist: Path, wheel: Path) -> None:
        self.source, self.sdist, self.wheel = source, sdist, wheel


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    """The sdist, and the wheel built from it, out of a copy of this tree."""
    work = tmp_path_factory.mktemp("packaging")
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=LEFT_OUT)
    out = run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(work / "dist"),
               str(source)])
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (sdist,) = (work / "dist").glob("*.tar.gz")
    (wheel,) = (work / "dist").glob("*.whl")
    return Dists(source, sdist, wheel)


def test_the_wheel_carries_every_module_of_the_package_and_py_typed(dists: Dists) -> None:
    names = set(zipfile.ZipFile(dists.wheel).namelist())
    package = {f"lbmiddleware/{name}" for name in files_under(dists.source / "lbmiddleware")}
    assert "lbmiddleware/py.typed" in names
    for subpackage in SUBPACKAGES:
        assert f"lbmiddleware/{subpackage}/__init__.py" in names
    assert package <= names, sorted(package - names)
    # Nothing else: the tests, benchmarks and examples are the sdist's, not the installed package's.
    info = dists.wheel.name.split("-py3")[0] + ".dist-info/"
    assert {name for name in names if not name.startswith(("lbmiddleware/", info))} == set()
    assert info + "licenses/LICENSE" in names


def test_the_wheel_metadata(dists: Dists) -> None:
    info = dists.wheel.name.split("-py3")[0] + ".dist-info/"
    metadata = zipfile.ZipFile(dists.wheel).read(info + "METADATA").decode()
    lines = set(metadata.split("\n\n", 1)[0].splitlines())
    assert {"License-Expression: MIT", "License-File: LICENSE", "Requires-Python: >=3.10",
            "Classifier: Typing :: Typed", "Provides-Extra: requests"} <= lines
    # `pip install lbmiddleware` installs nothing else: requests comes with the extra.
    required = {line for line in lines if line.startswith("Requires-Dist:")}
    assert required and all("extra ==" in line for line in required), sorted(required)
    # 2.32.3: the first whose HTTPAdapter has build_connection_pool_key_attributes.
    assert 'Requires-Dist: requests>=2.32.3; extra == "requests"' in lines


def test_the_sdist_carries_what_its_tests_need(dists: Dists) -> None:
    with tarfile.open(dists.sdist) as sdist:
        top = sdist.getnames()[0].split("/")[0]
        names = {name.partition("/")[2] for name in sdist.getnames()}
    for name in ("LICENSE", "README.md", "setup.cfg", "pyproject.toml", "MANIFEST.in", "Makefile",
                 "lbmiddleware/py.typed", "tests/conftest.py", "tests/support/__init__.py"):
        assert name in names
    for folder in GRAFTED:
        assert folder in names, f"the sdist has no {folder}/"
        carried = {f"{folder}/{name}" for name in files_under(dists.source / folder)}
        assert carried <= names, sorted(carried - names)
    assert top == dists.sdist.name.removesuffix(".tar.gz")


def test_the_core_tests_run_from_the_unpacked_sdist(dists: Dists, tmp_path: Path) -> None:
    with tarfile.open(dists.sdist) as sdist:
        if hasattr(tarfile, "data_filter"):     # 3.10.12 and later
            sdist.extractall(tmp_path, filter="data")
        else:
            sdist.extractall(tmp_path)
    (unpacked,) = tmp_path.iterdir()
    where = run([sys.executable, "-c", "import lbmiddleware; print(lbmiddleware.__file__)"],
                cwd=unpacked)
    assert Path(where.stdout.strip()).parent == unpacked / "lbmiddleware", where.stderr
    out = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "core"],
              cwd=unpacked)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert " passed" in out.stdout.splitlines()[-1]


USER_SCRIPT = """\
import lbmiddleware as lb

reveal_type(lb.Balancer(["http://127.0.0.1:1"]).pick())
reveal_type(lb.LoadBalancingAdapter)
reveal_type(lb.LoadBalancerMiddleware)
reveal_type(lb.WSGILoadBalancer)
reveal_type(lb.ProxySettings)
lb.LoadBalancingAdaptr
# The README's calls: settings take text (a cast makes it typed) and read back typed. An
# entry may be a source as well as a backend: settings.backends holds both, and
# static_backends / sources each kind alone.
settings = lb.Settings(backends=["http://127.0.0.1:1"])
reveal_type(settings.backends)
reveal_type(settings.static_backends)
reveal_type(settings.sources)
lb.Balancer(["http://127.0.0.1:1"], policy="latency")
lb.Balancer(settings=lb.Settings(backends="http://127.0.0.1:1, http://127.0.0.1:2",
                                 policy="latency", max_fails="3", fail_timeout="10s"))
lb.ForwardingSettings(fail_statuses=[502], retries="3", read_timeout="250ms")
lb.ProxySettings(trusted_proxies=["10.0.0.0/8"], retry_buffer="64KB", strip_prefix="yes")
# The README's front-ends: Starlette's add_middleware and Middleware take the ASGI middleware
# (their factory protocol passes the app positionally and the options as keywords).
import requests
from starlette.applications import Starlette
from starlette.middleware import Middleware

urls = ["http://127.0.0.1:8001", "http://127.0.0.1:8002"]
app = Starlette(routes=[])
app.add_middleware(lb.LoadBalancerMiddleware, prefix="/api", backends=urls, policy="ip_hash",
                   trusted_proxies=["10.0.0.0/8"])
app.add_middleware(lb.LoadBalancerMiddleware)
pool = lb.Balancer(urls, policy="least_conn", max_fails=3)
app.add_middleware(lb.LoadBalancerMiddleware, balancer=pool, prefix="/api", retries=0)
Starlette(middleware=[Middleware(lb.LoadBalancerMiddleware, backends=urls, prefix="/api")])
lb.LoadBalancerMiddleware(app, backends=urls, prefix="/api")
session = requests.Session()
session.mount("http://orders/", lb.LoadBalancingAdapter(urls, policy="latency", retries=2))
session.mount("http://orders/", lb.LoadBalancingAdapter.from_env())
session.mount("http://svc/", lb.LoadBalancingAdapter(balancer=pool, retries=2))
lb.WSGILoadBalancer(None, prefix="/api", backends=urls)
# Wherever backends are taken, an entry may be a source, as text or as a Source.
orders = lb.Source("dns+http://orders.internal:8080")
lb.Balancer([orders, lb.Backend("http://10.0.0.9:8080", priority=1)])
lb.Settings(backends=[orders, "http://10.0.0.9:8080 backup"])
lb.LoadBalancingAdapter([orders, "http://10.0.0.9:8080 backup"])
lb.LoadBalancerMiddleware(app, backends=[orders], prefix="/api")
lb.WSGILoadBalancer(None, backends=[orders, "etcd://127.0.0.1:2379/services/orders"])
"""

# What the user script imports beside the package: found by mypy through a .pth file in the
# wheel's environment, from this test environment (the test extra installs them).
USER_IMPORTS = ("starlette", "anyio", "typing_extensions", "requests", "urllib3", "idna",
                "certifi", "charset_normalizer")


def test_a_user_script_type_checks_against_the_installed_wheel(dists: Dists,
                                                               tmp_path: Path) -> None:
    # A virtual environment holding the wheel alone; mypy reads its site-packages, where the
    # package counts as typed only through its py.typed (PEP 561).
    venv = tmp_path / "venv"
    assert run([sys.executable, "-m", "venv", "--without-pip", str(venv)]).returncode == 0
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
    site_packages = Path(purelib.stdout.strip())
    install = run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                   "--target", str(site_packages), str(dists.wheel)])
    assert install.returncode == 0, install.stderr
    beside = tmp_path / "beside"
    beside.mkdir()
    for name in USER_IMPORTS:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None, name
        source = Path(spec.origin)
        source = source.parent if source.name == "__init__.py" else source
        (beside / source.name).symlink_to(source, target_is_directory=source.is_dir())
    (site_packages / "user_imports.pth").write_text(f"{beside}\n")
    (tmp_path / "user.py").write_text(USER_SCRIPT)
    (tmp_path / "mypy.ini").write_text("[mypy]\nstrict = True\n")
    out = run([sys.executable, "-m", "mypy", "--config-file", "mypy.ini", "--cache-dir", os.devnull,
               "--python-executable", str(python), "--verbose", "user.py"], cwd=tmp_path)
    revealed = [line.split('Revealed type is "', 1)[1].rstrip('"')
                for line in out.stdout.splitlines() if "Revealed type is" in line]
    assert len(revealed) == 8, out.stdout + out.stderr[-3000:]
    assert revealed[0] == "lbmiddleware.core.backend.Backend"
    # The entries as given: backends and sources; then each kind alone.
    assert revealed[5] == ("tuple[lbmiddleware.core.backend.Backend | "
                           "lbmiddleware.core.backend.Source, ...]")
    assert revealed[6] == "tuple[lbmiddleware.core.backend.Backend, ...]"
    assert revealed[7] == "tuple[lbmiddleware.core.backend.Source, ...]"
    # The lazily loaded front-ends are their classes (constructors), not Any.
    for shown, name in zip(revealed[1:5], ("LoadBalancingAdapter", "LoadBalancerMiddleware",
                                          "WSGILoadBalancer", "ProxySettings"), strict=True):
        assert re.search(rf"^def \(.*\) -> lbmiddleware\.[\w.]+\.{name}$", shown), shown
    # A misspelt name is an error, not an Any from the module's lazy __getattr__; the
    # settings given as text, and sources among the backends, are no error.
    errors = [line for line in out.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1 and 'has no attribute "LoadBalancingAdaptr"' in errors[0], out.stdout
    # The copy checked is the installed one.
    assert f"Parsing {site_packages / 'lbmiddleware' / '__init__.py'} " in out.stderr
    assert str(ROOT / "lbmiddleware") not in out.stderr


def test_without_requests_its_front_ends_name_the_extra() -> None:
    code = WITHOUT_REQUESTS + (
        "import lbmiddleware as lb\n"
        "for name in ('LoadBalancingAdapter', 'WSGILoadBalancer', 'NoHealthyBackendError'):\n"
        "    try:\n"
        "        getattr(lb, name)\n"
        "    except ImportError as exc:\n"
        "        print(name, '|', exc.name, '|', exc)\n")
    out = run([sys.executable, "-c", code])
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 3, out.stdout
    names = ("LoadBalancingAdapter", "WSGILoadBalancer", "NoHealthyBackendError")
    for line, name in zip(lines, names, strict=True):
        assert line.startswith(f"{name} | requests | lbmiddleware.{name} needs requests")
        assert line.endswith("pip install 'lbmiddleware[requests]'")


def test_without_requests_importing_its_front_ends_names_the_extra() -> None:
    code = WITHOUT_REQUESTS + (
        "import importlib\n"
        "for module in ('lbmiddleware.adapter', 'lbmiddleware.adapter.bodies', "
        "'lbmiddleware.wsgi'):\n"
        "    try:\n"
        "        importlib.import_module(module)\n"
        "    except ImportError as exc:\n"
        "        print(module, '|', exc.name, '|', exc)\n")
    out = run([sys.executable, "-c", code])
    assert out.returncode == 0, out.stderr
    needs = "needs requests, which is not installed: pip install 'lbmiddleware[requests]'"
    assert out.stdout.splitlines() == [
        f"lbmiddleware.adapter | requests | lbmiddleware.adapter {needs}",
        f"lbmiddleware.adapter.bodies | requests | lbmiddleware.adapter {needs}",
        f"lbmiddleware.wsgi | requests | lbmiddleware.wsgi {needs}"], out.stdout


def test_a_requests_too_old_for_the_adapter_is_named_with_the_version_it_needs() -> None:
    # Before 2.32.3 HTTPAdapter has no build_connection_pool_key_attributes: the adapter's
    # override, which names a DNS backend's server over TLS, would never be called.
    code = (
        "import requests, requests.adapters\n"
        "del requests.adapters.HTTPAdapter.build_connection_pool_key_attributes\n"
        "requests.__version__ = '2.31.0'\n"
        "import lbmiddleware as lb\n"
        "for name in ('LoadBalancingAdapter', 'WSGILoadBalancer'):\n"
        "    try:\n"
        "        getattr(lb, name)\n"
        "    except ImportError as exc:\n"
        "        print(name, '|', exc.name, '|', exc)\n")
    out = run([sys.executable, "-c", code])
    assert out.returncode == 0, out.stderr
    needs = ("lbmiddleware.adapter needs requests 2.32.3 or later, not 2.31.0: "
             "pip install 'lbmiddleware[requests]'")
    assert out.stdout.splitlines() == [f"LoadBalancingAdapter | requests | {needs}",
                                       f"WSGILoadBalancer | requests | {needs}"], out.stdout


def test_without_requests_the_core_asgi_gateway_and_demo_work() -> None:
    code = WITHOUT_REQUESTS + (
        "import lbmiddleware as lb\n"
        "import lbmiddleware.__main__, lbmiddleware.demo, lbmiddleware.gateway\n"
        "pool = lb.Balancer(['http://127.0.0.1:1', 'http://127.0.0.1:2'])\n"
        "lb.LoadBalancerMiddleware(None, balancer=pool)\n"
        "lb.ProxySettings(), lb.AdapterSettings()\n"
        "print(sorted(name for name in sys.modules if name.startswith(('requests', 'urllib3'))))\n")
    out = run([sys.executable, "-c", code])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
