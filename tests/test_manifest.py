"""Manifests (bactrian.json) mask secret options."""

import json


def test_manifests_mask_secret_options(tmp_path):
    from bactrian.manifest import write_manifest

    write_manifest(tmp_path, "report", {"judge_api_key": "sk-live-123", "upstream_api_key": "", "model": "m"})
    manifest = json.loads((tmp_path / "bactrian.json").read_text())
    assert manifest["config"] == {"judge_api_key": "***", "upstream_api_key": "", "model": "m"}
