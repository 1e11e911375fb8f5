"""The example targets file is valid, shows every kind of credentials, and holds no secret."""

from __future__ import annotations

from pathlib import Path

from worker.targets import load_targets

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "targets.example.yaml"


def test_the_example_targets_file_is_valid_and_shows_each_kind_of_credentials() -> None:
    found = load_targets(EXAMPLE)
    kinds = {target.credentials_kind for target in found.targets}
    assert kinds == {"env-aksk", "assume", "agency", "file"}
    assert len(set(found.names)) == len(found.targets) >= 3
    assert any(not t.shares for t in found.targets) and any(t.shares for t in found.targets)
    # Every endpoint derived from its region, on Huawei Cloud's domain.
    assert all(t.api_endpoint == f"https://sfs-turbo.{t.region}.myhuaweicloud.com" for t in found.targets)


def test_the_example_names_variables_and_files_never_values() -> None:
    text = EXAMPLE.read_text()
    for word in ("secret_key: PROD_SK", "access_key: PROD_AK"):
        assert word in text
    assert "password" not in text.lower() and "MII" not in text
