"""The host's package index settings, given to a containerized kernel (``package_index``).

With ``package_index = host`` (the default), a kernel starts with what pip on the host
would use: its configuration files and ``PIP_*`` environment (index URL, extra index
URLs, find-links, trusted hosts, constraints, timeouts, the CA bundle), the proxy
variables and the CA bundle itself. They are read when a kernel starts (never written
into kernel.json), so a change on the host reaches the next kernel. Local paths they
name (a ``file://`` index, a find-links folder, a constraints file) are mounted
read-only at the same path; the CA bundle is mounted read-only at :data:`CA_IN_KERNEL`,
and ``PIP_CERT``, ``SSL_CERT_FILE`` and ``REQUESTS_CA_BUNDLE`` point at it.

Values that hold credentials (an index URL with a user and password) travel only in
the kernel's environment, which the snapshot's secret filter keeps out of run images.

``package_index = none`` gives the kernel ``PIP_NO_INDEX=1``: pip and a ``--base``
build fail at once, saying why, instead of waiting on an index it cannot reach.
"""

from __future__ import annotations

import configparser
import contextlib
import os
import re
import ssl
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "CA_IN_KERNEL",
    "IndexSettings",
    "PACKAGE_INDEX_ENV",
    "describe_index",
    "host_settings",
    "index_link_dirs",
    "pip_config",
    "prepare_pip",
]

#: Where a kernel finds the host's CA bundle.
CA_IN_KERNEL = "/etc/nbcontainer/host-ca-certificates.crt"
#: Tells code in the kernel which package_index it was given ('host' or 'none').
PACKAGE_INDEX_ENV = "NBCONTAINER_PACKAGE_INDEX"

# pip's settings a kernel takes, each as its environment variable.
_SETTINGS = (
    "index-url",
    "extra-index-url",
    "find-links",
    "trusted-host",
    "cert",
    "client-cert",
    "timeout",
    "default-timeout",
    "retries",
    "proxy",
    "constraint",
    "no-index",
    "pre",
    "only-binary",
    "prefer-binary",
)
# Settings whose values may name local paths (mounted read-only at the same path).
_PATH_SETTINGS = ("index-url", "extra-index-url", "find-links", "constraint", "client-cert")
# Settings naming an index (a file:// one has pages that link to files elsewhere).
_INDEX_SETTINGS = ("index-url", "extra-index-url")
_PROXY_NAMES = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY")
# pip's system-wide file besides the XDG ones.
SYSTEM_FILE = Path("/etc/pip.conf")
# pip reads [global] and then the command's own section; a kernel's pip installs.
_SECTIONS = ("global", "install")


@dataclass(frozen=True)
class IndexSettings:
    """What a kernel gets: environment, read-only mounts (host path -> container path),
    and what was left out of the host's settings and why (said when the kernel starts)."""

    env: dict[str, str] = field(default_factory=dict)
    mounts: dict[str, str] = field(default_factory=dict)
    index: str = "pip's default index"  # named in messages, credentials hidden
    left_out: list[str] = field(default_factory=list)


def _env_name(setting: str) -> str:
    return "PIP_" + setting.upper().replace("-", "_")


def config_files(environ: Mapping[str, str]) -> list[Path]:
    """pip's configuration files in the order it applies them (later ones win)."""
    env_file = environ.get("PIP_CONFIG_FILE")
    if env_file == os.devnull:
        return []
    xdg_dirs = (environ.get("XDG_CONFIG_DIRS") or "/etc/xdg").split(os.pathsep)
    home = Path(environ.get("HOME") or os.path.expanduser("~"))
    xdg_home = Path(environ.get("XDG_CONFIG_HOME") or home / ".config")
    files = [Path(d) / "pip" / "pip.conf" for d in xdg_dirs] + [SYSTEM_FILE]
    files += [home / ".pip" / "pip.conf", xdg_home / "pip" / "pip.conf"]
    files.append(Path(sys.prefix) / "pip.conf")
    if env_file:
        files.append(Path(env_file))
    return files


def pip_config(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """pip's effective settings on this host: its files, then ``PIP_*`` variables."""
    environ = os.environ if environ is None else environ
    values: dict[str, str] = {}
    for path in config_files(environ):
        parser = configparser.RawConfigParser()
        try:
            parser.read(path)
        except (OSError, configparser.Error):
            continue
        for section in _SECTIONS:
            if parser.has_section(section):
                values.update(parser.items(section))
    for setting in _SETTINGS:
        if _env_name(setting) in environ:
            values[setting] = environ[_env_name(setting)]
    return {k: " ".join(v.split()) for k, v in values.items() if k in _SETTINGS}


def _host_ca(config: Mapping[str, str], environ: Mapping[str, str]) -> str | None:
    """The CA bundle pip on the host trusts."""
    defaults = ssl.get_default_verify_paths()
    for candidate in (
        config.get("cert"),
        environ.get("REQUESTS_CA_BUNDLE"),
        environ.get("SSL_CERT_FILE"),
        defaults.cafile,
        defaults.openssl_cafile,
    ):
        if candidate and os.path.isfile(candidate):
            return os.path.realpath(candidate)
    return None


def _local_path(value: str) -> str | None:
    """The local path a setting's value names (a file:// URL or a plain path), if any."""
    if value.startswith("file://"):
        path = urlsplit(value).path
    elif value.startswith("/"):
        path = value
    else:
        return None
    return path if os.path.exists(path) else None


# Project pages of a file:// index read to learn where its links point (a mirror's
# layout is the same for every project, so a sample tells).
_SAMPLE_PAGES = 24
_HREF = re.compile(rb"""href\s*=\s*["']([^"'#]+)""", re.IGNORECASE)


def index_link_dirs(index_dir: str) -> tuple[list[str], str]:
    """The directories a ``file://`` index's project pages link into outside the index
    (the common mirror layout: ROOT/simple/<project>/ linking to ROOT/files/<wheel>),
    as few as cover them; and why they cannot be mounted ('' when they can). Pages are
    sampled across the index."""
    root = Path(index_dir)
    try:
        projects = sorted(p for p in root.iterdir() if p.is_dir())
    except OSError as exc:
        return [], f"its directory cannot be read ({exc.strerror})"
    step = max(1, len(projects) // _SAMPLE_PAGES)
    targets: set[str] = set()
    for project in projects[::step][:_SAMPLE_PAGES]:
        page = project / "index.html"
        try:
            html = page.read_bytes()[: 4 << 20]
        except OSError:
            continue
        for href in _HREF.findall(html):
            link = href.decode("utf-8", "replace")
            if "://" in link and not link.startswith("file://"):
                continue  # served from elsewhere: nothing to mount
            path = urlsplit(link).path if link.startswith("file://") else link
            target = os.path.normpath(os.path.join(str(project), path))
            if not target.startswith(str(root.resolve()) + "/"):
                targets.add(os.path.dirname(os.path.realpath(target)))
    if not targets:
        return [], ""
    missing = sorted(t for t in targets if not os.path.isdir(t))
    if missing:
        return [], f"its pages link into {missing[0]}, which does not exist"
    if len(targets) <= 8:
        return sorted(targets), ""
    common = os.path.commonpath(sorted(targets))
    if common.count("/") < 2:  # '/' or '/opt': too much of the host to give a kernel
        return [], f"its pages link into {len(targets)} directories with no common one"
    return [common], ""


def describe_index(url: str | None) -> str:
    """An index URL fit for a message: any user and password replaced by '***'."""
    if not url:
        return "pip's default index"
    parts = urlsplit(url.split()[0])
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        parts = parts._replace(netloc=f"***@{host}")
    return urlunsplit(parts)


def host_settings(
    package_index: str = "host", environ: Mapping[str, str] | None = None
) -> IndexSettings:
    """What a kernel with `package_index` ('host' or 'none') starts with."""
    environ = os.environ if environ is None else environ
    if package_index == "none":
        return IndexSettings(env={"PIP_NO_INDEX": "1", PACKAGE_INDEX_ENV: "none"})
    config = pip_config(environ)
    env = {PACKAGE_INDEX_ENV: "host"}
    mounts: dict[str, str] = {}
    left_out: list[str] = []
    for setting, value in config.items():
        if setting == "cert":
            continue  # the CA bundle is mounted at a path of its own, below
        kept = []
        for item in value.split():
            path = _local_path(item) if setting in _PATH_SETTINGS else None
            if path is None and setting in _PATH_SETTINGS and item.startswith(("file:", "/")):
                left_out.append(f"{setting} {item}: it does not exist on this host")
                continue
            if path and setting in _INDEX_SETTINGS and os.path.isdir(path):
                # pip reads the index's pages, then the files they link to: both.
                linked, why = index_link_dirs(path)
                if why:
                    left_out.append(f"{setting} {item}: {why}")
                    continue
                for directory in linked:
                    mounts[directory] = directory
            if path:
                mounts[path] = path
            kept.append(item)
        if kept:
            env[_env_name(setting)] = " ".join(kept)
    for name in _PROXY_NAMES:
        for variant in (name, name.lower()):
            if environ.get(variant):
                env[variant] = environ[variant]
    ca = _host_ca(config, environ)
    if ca:
        mounts[ca] = CA_IN_KERNEL
        env.update(PIP_CERT=CA_IN_KERNEL, SSL_CERT_FILE=CA_IN_KERNEL)
        env["REQUESTS_CA_BUNDLE"] = CA_IN_KERNEL
    return IndexSettings(
        env=env,
        mounts=mounts,
        index=describe_index(config.get("index-url")),
        left_out=left_out,
    )


NO_INDEX_NOTE = (
    "note: this kernel's kernelspec has package_index 'none', so pip has no package index "
    "here (PIP_NO_INDEX); install from a wheel file or a find-links folder, or use a "
    "kernelspec with package_index 'host' (nbcontainer kernelspec install --package-index host)"
)


def prepare_pip(ipython: object, environ: Mapping[str, str] | None = None) -> None:
    """Called in a containerized kernel when nbcontainer's extension loads.

    A kernel that runs as a user who cannot write the image's environment installs into
    its user site (pip does so by itself then); that directory is made now and put on
    sys.path, so that what `%pip install` puts there imports in the next cell. With
    package_index 'none', `%pip` first says why there is no index.
    """
    import site

    environ = os.environ if environ is None else environ
    if site.ENABLE_USER_SITE and not os.access(site.getsitepackages()[0], os.W_OK):
        user_site = site.getusersitepackages()
        with contextlib.suppress(OSError):  # no writable home: pip will say so itself
            os.makedirs(user_site, exist_ok=True)
        if os.path.isdir(user_site) and user_site not in sys.path:
            site.addsitedir(user_site)
    if environ.get(PACKAGE_INDEX_ENV) == "none":
        magics = getattr(ipython, "magics_manager", None)
        pip = magics.magics["line"].get("pip") if magics is not None else None
        from IPython.core.interactiveshell import InteractiveShell

        if isinstance(ipython, InteractiveShell):
            # IPython registers %pip lazily: its registration looks the name up again
            # when called (which would find this wrapper), so call the magic itself.
            from IPython.core.magics.packaging import PackagingMagics

            # (IPython's decorator hides that this is a bound method from mypy.)
            pip = PackagingMagics(shell=ipython).pip  # type: ignore[misc]
        if magics is not None and pip is not None:

            def pip_without_index(line: str) -> object:
                print(NO_INDEX_NOTE, file=sys.stderr)
                return pip(line)

            magics.register_function(pip_without_index, "line", "pip")
