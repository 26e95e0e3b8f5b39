"""The ecosystem's conventions (issue 12): credential helpers, DOCKER_CONFIG, REGISTRY_AUTH_FILE,
credentials from a file or stdin, a TLS registry with a private CA, mirrors, K3BUNDLE_* variables
and the site config, all against real local registries and the stand-in release server.
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import click
import pytest
import yaml
from click.testing import CliRunner

from k3bundle.bundler.build_cli import build_command
from k3bundle.bundler.net.fetch import FetchSettings
from k3bundle.bundler.oci import credentials
from k3bundle.bundler.oci.credentials import LoginStore, auth_files, read_auth_file
from k3bundle.bundler.oci.reference import parse_reference
from k3bundle.bundler.oci.registry import RegistryClient
from k3bundle.bundler.site_config import default_path
from k3bundle.installer.errors import FetchError, K3BundleError, UsageError
from k3bundle.installer.format.verify import inspect_bundle
from tests.bundler.conftest import bundle_path
from tests.helpers import KeyFiles, run_k3bundle
from tests.oci_registry import (  # noqa: F401 - tls_registry is a fixture
    PASSWORD,
    USER,
    ImageLayout,
    LocalRegistry,
    PushedImages,
    free_port,
    push,
    tls_registry,
    write_credential_helper,
    write_docker_config,
)
from tests.release_server import ReleaseServer

FAST = 5.0  # seconds: no test here may wait for a retry loop


@pytest.fixture
def helpers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, docker_home: Path) -> Path:
    """A folder on PATH for docker-credential-* scripts (HOME is a tmp folder too)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return folder


@pytest.fixture(scope="module")
def basic_single(basic_registry: LocalRegistry, image_layout: ImageLayout) -> str:
    """The single-platform image on the htpasswd registry."""
    push(
        image_layout.layout,
        "single",
        basic_registry.host,
        "conv/single:1.0",
        credentials=(USER, PASSWORD),
    )
    return f"{basic_registry.host}/conv/single:1.0"


@pytest.fixture(scope="module")
def tls_single(tls_registry: LocalRegistry, image_layout: ImageLayout) -> str:  # noqa: F811
    """The single-platform image on the https registry."""
    push(image_layout.layout, "single", tls_registry.host, "conv/single:1.0")
    return f"{tls_registry.host}/conv/single:1.0"


def client(host: str, **options: Any) -> RegistryClient:
    """A client that treats `host` as plain HTTP and never sleeps."""
    return RegistryClient(insecure=[host], sleep=lambda _: None, **options)


def build(server: ReleaseServer, tmp_path: Path, *args: str, **env: str) -> Tuple[int, str]:
    """`k3bundle build ARGS` in-process (amd64, -q) with extra environment: (exit code, text)."""
    base = ["--release-url", server.release_url, "--channel-url", server.channel_url, "-q"]
    base += [
        "--cache-dir",
        str(tmp_path / "cache"),
        "-o",
        str(tmp_path / "dist"),
        "--arch",
        "amd64",
    ]
    stdin = env.pop("_stdin", None)
    result = CliRunner().invoke(build_command, [*base, *args], env=env, input=stdin)
    if isinstance(result.exception, K3BundleError):
        return result.exception.exit_code, f"{result.output}Error: {result.exception.diagnostics()}"
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def image_names(dist: Path) -> List[str]:
    """io.containerd.image.name of every image in the bundle's amd64 image archive (tar)."""
    with tarfile.open(bundle_path(dist)) as bundle:
        member = bundle.extractfile("amd64/k3bundle-images-amd64.tar")
        assert member is not None
        with tarfile.open(fileobj=io.BytesIO(member.read())) as archive:
            index_file = archive.extractfile("index.json")
            assert index_file is not None
            index = json.load(index_file)
    return [m["annotations"]["io.containerd.image.name"] for m in index["manifests"]]


# --- credential helpers, DOCKER_CONFIG, REGISTRY_AUTH_FILE ----------------------------------------


def test_cred_helper_for_the_host_supplies_the_basic_registry_credentials(
    basic_registry: LocalRegistry, basic_single: str, helpers: Path, docker_home: Path
) -> None:
    write_credential_helper(helpers, "k3b", {basic_registry.host: (USER, PASSWORD)})
    write_docker_config(docker_home, {}, {"credHelpers": {basic_registry.host: "k3b"}})
    assert client(basic_registry.host).get_manifest(parse_reference(basic_single)).data
    assert (helpers / "k3b.log").read_text().split() == [basic_registry.host]


def test_identity_token_from_the_creds_store_gets_a_bearer_token_by_refresh(
    token_registry: LocalRegistry, image_layout: ImageLayout, helpers: Path, docker_home: Path
) -> None:
    assert token_registry.token_server is not None
    token_registry.token_server.refresh_tokens["idtok-k3b"] = USER
    push(
        image_layout.layout,
        "single",
        token_registry.host,
        "conv/id:1.0",
        credentials=(USER, PASSWORD),
    )
    write_credential_helper(helpers, "desk", {token_registry.host: ("<token>", "idtok-k3b")})
    write_docker_config(docker_home, {}, {"credsStore": "desk"})
    ref = parse_reference(f"{token_registry.host}/conv/id:1.0")
    assert client(token_registry.host).get_manifest(ref).data
    assert token_registry.token_server.issued[-1] == (USER, ("repository:conv/id:pull",))


def test_precedence_is_cred_helpers_then_creds_store_then_auths(
    helpers: Path, tmp_path: Path
) -> None:
    write_credential_helper(helpers, "one", {"r.io": ("helper", "1")})
    write_credential_helper(
        helpers, "all", {"r.io": ("store", "2"), "https://index.docker.io/v1/": ("hub", "3")}
    )
    path = write_docker_config(tmp_path, {"r.io": ("auths", "4"), "q.io": ("auths", "5")})
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "credHelpers": {"r.io": "one"}, "credsStore": "all"}))
    store = LoginStore([path])
    assert store.lookup("r.io") == ("helper", "1")
    assert store.lookup("index.docker.io") == ("hub", "3")  # the store is asked for Hub's URL
    assert store.lookup("q.io") == ("auths", "5")  # the store has nothing for it
    path.write_text(json.dumps({**config, "credsStore": "all"}))
    assert LoginStore([path]).lookup("r.io") == ("store", "2")


def test_a_cred_helper_missing_from_path_is_an_error_naming_it(
    helpers: Path, tmp_path: Path
) -> None:
    path = write_docker_config(tmp_path, {}, {"credHelpers": {"r.io": "k3b-absent"}})
    with pytest.raises(UsageError) as raised:
        LoginStore([path]).lookup("r.io")
    assert "docker-credential-k3b-absent is not on PATH" in raised.value.message
    assert str(path) in raised.value.hint


def test_a_failing_or_hanging_helper_is_named_and_its_output_never_shown(
    helpers: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = helpers / "docker-credential-bad"
    script.write_text("#!/bin/sh\necho 'Secret: hunter2-leak'\nexit 3\n")
    script.chmod(0o755)
    write_credential_helper(helpers, "slow", {}, sleep=30)
    path = write_docker_config(tmp_path, {}, {"credHelpers": {"r.io": "bad", "s.io": "slow"}})
    with pytest.raises(UsageError) as raised:
        LoginStore([path]).lookup("r.io")
    assert f"{script} failed for r.io (exit 3)" in raised.value.message
    assert "hunter2" not in raised.value.diagnostics()
    monkeypatch.setattr(credentials, "HELPER_TIMEOUT", 0.5)
    started = time.monotonic()
    with pytest.raises(UsageError, match="did not answer within"):
        LoginStore([path]).lookup("s.io")
    assert time.monotonic() - started < FAST


def test_registry_auth_file_wins_over_docker_config_and_both_env_locations_are_read(
    tmp_path: Path,
) -> None:
    podman = write_docker_config(tmp_path / "podman", {"r.io": ("podman", "1")})
    docker = write_docker_config(
        tmp_path / "docker", {"r.io": ("docker", "2"), "q.io": ("docker", "3")}
    )
    env = {"REGISTRY_AUTH_FILE": str(podman), "DOCKER_CONFIG": str(docker.parent)}
    assert auth_files(env) == [podman, docker]
    store = LoginStore(auth_files(env))
    assert (store.lookup("r.io"), store.lookup("q.io")) == (("podman", "1"), ("docker", "3"))
    assert auth_files({"HOME": "/nowhere"})[-1] == Path("~/.docker/config.json").expanduser()


def test_registry_auth_file_and_stdin_take_host_user_password_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "auth"
    path.write_text("# site registries\nr.io=me:pa:ss\n\nindex.docker.io=hub:tok\n")
    assert read_auth_file(str(path)) == {"r.io": ("me", "pa:ss"), "docker.io": ("hub", "tok")}
    monkeypatch.setattr("sys.stdin", io.StringIO("q.io=u:p\n"))
    assert read_auth_file("-") == {"q.io": ("u", "p")}
    path.write_text("r.io=nopassword\n")
    with pytest.raises(UsageError) as raised:
        read_auth_file(str(path))
    assert str(path) in raised.value.message and "nopassword" not in raised.value.message


def test_build_reads_registry_credentials_from_stdin(
    server: ReleaseServer,
    basic_registry: LocalRegistry,
    basic_single: str,
    docker_home: Path,
    tmp_path: Path,
) -> None:
    host = basic_registry.host
    args = ["--image", basic_single, "--insecure-registry", host, "--registry-auth-file", "-"]
    code, output = build(server, tmp_path, *args, _stdin=f"{host}={USER}:{PASSWORD}\n")
    assert code == 0, output
    assert [i["name"] for i in inspect_bundle(str(bundle_path(tmp_path / "dist")))["images"]] == [
        basic_single
    ]


def test_k3bundle_registry_auth_variable_gives_credentials(
    server: ReleaseServer,
    basic_registry: LocalRegistry,
    basic_single: str,
    docker_home: Path,
    tmp_path: Path,
) -> None:
    host = basic_registry.host
    code, output = build(
        server, tmp_path, "--image", basic_single, "--insecure-registry", host,
        K3BUNDLE_REGISTRY_AUTH=f"{host}={USER}:{PASSWORD}",
    )  # fmt: skip
    assert code == 0, output


# --- TLS with a private CA ------------------------------------------------------------------------


def test_tls_registry_without_its_ca_fails_fast_naming_ca_file_never_plain_http(
    tls_registry: LocalRegistry,  # noqa: F811 - the fixture
    tls_single: str,
    docker_home: Path,
) -> None:
    started = time.monotonic()
    with pytest.raises(FetchError) as raised:
        RegistryClient(sleep=lambda _: None).get_manifest(parse_reference(tls_single))
    assert time.monotonic() - started < FAST
    assert "TLS failed" in raised.value.message and "certificate" in raised.value.message
    assert "--ca-file" in raised.value.hint and "SSL_CERT_FILE" in raised.value.hint
    assert "insecure" not in raised.value.hint


def test_tls_registry_with_ca_file_pulls_even_when_requests_ca_bundle_says_otherwise(
    tls_registry: LocalRegistry,  # noqa: F811 - the fixture
    tls_single: str,
    docker_home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert tls_registry.tls is not None
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls_registry.tls.cert))  # not a CA: useless
    settings = FetchSettings(ca_file=str(tls_registry.tls.ca))
    assert RegistryClient(settings).get_manifest(parse_reference(tls_single)).data


@pytest.mark.parametrize("how", ["--ca-file", "SSL_CERT_FILE", "site config ca_file"])
def test_build_from_tls_registry_trusts_the_test_ca(
    server: ReleaseServer,
    tls_registry: LocalRegistry,  # noqa: F811 - the fixture
    tls_single: str,
    docker_home: Path,
    tmp_path: Path,
    how: str,
) -> None:
    assert tls_registry.tls is not None
    ca, args, env = str(tls_registry.tls.ca), ["--image", tls_single], {}
    if how == "--ca-file":
        args += ["--ca-file", ca]
    elif how == "SSL_CERT_FILE":
        env["SSL_CERT_FILE"] = ca
    else:
        config = tmp_path / "site.yaml"
        config.write_text(yaml.safe_dump({"registries": {tls_registry.host: {"ca_file": ca}}}))
        args += ["--config-file", str(config)]
    code, output = build(server, tmp_path, *args, **env)
    assert code == 0, output
    summary = inspect_bundle(str(bundle_path(tmp_path / "dist")))
    assert [image["name"] for image in summary["images"]] == [tls_single]


# --- mirrors --------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["flag", "spec", "site config"])
def test_mirror_serves_the_pull_and_the_bundle_keeps_the_canonical_name(
    server: ReleaseServer,
    pushed_images: PushedImages,
    docker_home: Path,
    tmp_path: Path,
    where: str,
) -> None:
    host = pushed_images.host
    repo = parse_reference(pushed_images.index).repository  # tXXXX/hello
    canonical = f"docker.io/{repo}:1.0"
    args = ["--image", canonical, "--insecure-registry", host, "--images-format", "tar"]
    doc = {"apiVersion": "k3bundle/v1", "kind": "Bundle", "k3s": {}}
    if where == "flag":
        args += ["--registry-mirror", f"docker.io={host}"]
    elif where == "spec":
        (tmp_path / "spec.yaml").write_text(yaml.safe_dump({**doc, "mirrors": {"docker.io": host}}))
        args += ["-f", str(tmp_path / "spec.yaml")]
    else:
        (tmp_path / "site.yaml").write_text(yaml.safe_dump({"mirrors": {"index.docker.io": host}}))
        args += ["--config-file", str(tmp_path / "site.yaml")]
    code, output = build(server, tmp_path, *args)
    assert code == 0, output
    summary = inspect_bundle(str(bundle_path(tmp_path / "dist")))
    assert [(i["name"], i["digest"]) for i in summary["images"]] == [
        (canonical, pushed_images.digests["index"])
    ]
    assert image_names(tmp_path / "dist") == [canonical]


def test_mirror_with_a_path_prefix_maps_the_repository_under_it(
    server: ReleaseServer, pushed_images: PushedImages, docker_home: Path, tmp_path: Path
) -> None:
    host = pushed_images.host
    prefix, name = parse_reference(pushed_images.single).repository.split("/", 1)
    args = ["--image", f"quay.io/{name}:1.0", "--registry-mirror", f"quay.io={host}/{prefix}"]
    code, output = build(server, tmp_path, *args, "--insecure-registry", host)
    assert code == 0, output
    assert (
        inspect_bundle(str(bundle_path(tmp_path / "dist")))["images"][0]["name"]
        == f"quay.io/{name}:1.0"
    )


def test_a_failing_mirror_is_an_error_naming_both_and_nothing_falls_back(
    server: ReleaseServer, docker_home: Path, tmp_path: Path
) -> None:
    mirror = f"127.0.0.1:{free_port()}"
    args = ["--image", "docker.io/library/nginx:1.27", "--registry-mirror", f"docker.io={mirror}"]
    code, output = build(server, tmp_path, *args, "--insecure-registry", mirror, "--retries", "0")
    assert code == 8, output
    assert f"through the mirror {mirror} for docker.io/library/nginx:1.27" in output
    assert "does not fall back to docker.io" in output


@pytest.mark.parametrize("value", ["docker.io", "docker.io=", "docker.io=not a host", "=m.io"])
def test_a_bad_mirror_flag_is_a_usage_error(
    server: ReleaseServer, tmp_path: Path, value: str
) -> None:
    code, output = build(server, tmp_path, "--registry-mirror", value)
    assert code == 2 and "--registry-mirror" in output and "SOURCE=MIRROR" in output


# --- K3BUNDLE_* variables and the site config ---------------------------------------------------


def params(*args: str, **env: str) -> Dict[str, Any]:
    """The values `k3bundle build ARGS` would run with (flags, env, site config), not running it."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        context = build_command.make_context("build", list(args))
    return dict(context.params)


def test_every_build_option_has_a_k3bundle_variable_shown_in_help() -> None:
    options = [p for p in build_command.params if isinstance(p, click.Option)]
    names = {max(p.opts, key=len): p.envvar for p in options}
    assert (
        names["--sign-key"] == "K3BUNDLE_SIGN_KEY"
        and names["--registry-mirror"] == "K3BUNDLE_REGISTRY_MIRROR"
    )
    assert all(isinstance(v, (str, list)) and "K3BUNDLE_" in str(v) for v in names.values()), names
    text = CliRunner().invoke(build_command, ["--help"], terminal_width=200).output
    assert "env var: K3BUNDLE_SIGN_KEY" in text and "SSL_CERT_FILE" in text


def test_precedence_is_flag_then_variable_then_site_config(tmp_path: Path) -> None:
    config = tmp_path / "site.yaml"
    config.write_text(
        "retries: 3\njobs: 7\ntimeout: 9.5\nrelease_url: https://mirror.example/k3s\n"
    )
    got = params(
        "--config-file", str(config), "--retries", "1", K3BUNDLE_RETRIES="2", K3BUNDLE_JOBS="5"
    )
    assert (got["retries"], got["jobs"], got["timeout"]) == (1, 5, 9.5)
    assert got["release_url"] == "https://mirror.example/k3s"
    assert params("--config-file", str(config))["retries"] == 3


def test_the_site_config_is_found_in_xdg_config_home_and_via_k3bundle_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert default_path() == tmp_path / "xdg" / "k3bundle" / "config.yaml"
    default_path().parent.mkdir(parents=True)
    default_path().write_text("jobs: 3\n")
    assert params()["jobs"] == 3
    other = tmp_path / "other.yaml"
    other.write_text("jobs: 2\n")
    assert params(K3BUNDLE_CONFIG_FILE=str(other))["jobs"] == 2


def test_sign_key_from_the_environment_and_from_the_site_config_signs_the_bundle(
    server: ReleaseServer, signer: KeyFiles, tmp_path: Path
) -> None:
    code, output = build(server, tmp_path / "env", K3BUNDLE_SIGN_KEY=str(signer.private))
    assert code == 0 and "signed by" in output, output
    config = tmp_path / "site.yaml"
    config.write_text(f"sign_key: {os.path.relpath(signer.private, tmp_path)}\n")  # relative to it
    code, output = build(server, tmp_path / "cfg", "--config-file", str(config))
    assert code == 0 and "signed by" in output, output


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sign_kee: x\n", "unknown key(s) sign_kee"),
        ("jobs: many\n", "jobs must be a int"),
        ("registries: {r.io: {password: x}}\n", "registries.r.io: unknown key password"),
        ("registries: {r.io: {auth: nouser}}\n", "expected HOST=USER:PASSWORD"),
        ("mirrors: {docker.io: 'a b'}\n", "bad mirror"),
        ("sign_key: missing.key\n", "does not exist"),
        ("[1, 2]\n", "expected a mapping"),
    ],
)
def test_a_bad_site_config_is_refused_naming_the_file_and_the_key(
    server: ReleaseServer, tmp_path: Path, text: str, expected: str
) -> None:
    config = tmp_path / "site.yaml"
    config.write_text(text)
    code, output = build(server, tmp_path, "--config-file", str(config))
    assert code == 2, output
    assert f"site config {config}" in output or str(config) in output
    assert expected in output


# --- completion, the zipapp's --version, -q -----------------------------------------------------


def complete(*words: str) -> List[str]:
    """What bash completion offers after `k3bundle WORDS` (the last word being completed)."""
    env = {"COMP_WORDS": " ".join(["k3bundle", *words]), "COMP_CWORD": str(len(words))}
    done = run_k3bundle(env={**env, "_K3BUNDLE_COMPLETE": "bash_complete"})
    assert done.returncode == 0, done.stderr
    return [line.split(",", 1)[1] for line in done.stdout.splitlines()]


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_prints_the_script_for_each_shell(shell: str) -> None:
    done = run_k3bundle("completion", shell)
    assert done.returncode == 0 and f"{shell}_complete" in done.stdout
    assert "_K3BUNDLE_COMPLETE" in done.stdout


def test_completion_covers_commands_build_options_and_the_host_commands_options() -> None:
    assert {"build", "install", "verify", "completion", "keygen"} <= set(complete(""))
    assert complete("build", "--sign-") == ["--sign-key"]
    assert complete("install", "--pub") == ["--pubkey"]
    assert "--allow-unsigned" in complete("verify", "--")
    assert complete("install", "b.tar", "--arch", "arm") == ["arm64", "arm"]
    assert complete("install", "") == [""]  # a file name: bash completes it itself


def test_zipapp_version_is_the_package_version(tmp_path: Path) -> None:
    assert run_k3bundle("installer-zipapp", "-q", "-o", str(tmp_path / "i.pyz")).stderr == ""
    done = subprocess.run(
        [sys.executable, "-I", str(tmp_path / "i.pyz"), "--version"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0
    assert done.stdout == f"k3bundle {importlib.metadata.version('k3bundle')}\n"
    assert importlib.metadata.version("k3bundle") in run_k3bundle("--version").stdout


def test_keygen_quiet_prints_only_the_key_id(tmp_path: Path) -> None:
    done = run_k3bundle("keygen", "-q", "-o", str(tmp_path / "site"))
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.startswith("Key id: ") and len(done.stdout.splitlines()) == 1


def test_build_quiet_keeps_no_log_lines_even_with_verbose(
    server: ReleaseServer, signer: KeyFiles, tmp_path: Path
) -> None:
    code, output = build(server, tmp_path, "-v", "--sign-key", str(signer.private))
    assert code == 0, output
    assert output.startswith("Built ") and "downloading" not in output and "verified" not in output
