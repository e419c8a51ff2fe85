"""The endpoint remembers what the admin API set: a restart serves the registry's choice, not the newest."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from tests.fixtures.endpoint import install_adapters, start_endpoint
from tests.serving.test_endpoint import republish


def served(client) -> tuple[set[tuple[str, int]], dict]:
    listing = client.list_adapters()
    return {(a["subject"], a["version"]) for a in listing["adapters"]}, listing["routing"]


def test_restart_restores_loaded_versions_and_routing(tiny_base_path, tiny_adapters, tmp_path):
    adapters_dir = tmp_path / "models" / "adapters"
    install_adapters({s: Path(p) for s, p in tiny_adapters.items()}, adapters_dir)
    # a newer, valid v2 of mathematics lies on disk (say, a candidate the gate retired)
    republish(adapters_dir / "mathematics" / "v1", adapters_dir / "mathematics" / "v2", "mathematics", 2)
    token = secrets.token_urlsafe(16)
    args = ["--threads", "1"]
    with start_endpoint(tiny_base_path, adapters_dir, tmp_path, admin_token=token, args=args) as server:
        client = server.client()
        loaded, _ = served(client)
        assert ("mathematics", 2) in loaded and ("mathematics", 1) not in loaded  # first start: newest
        # the registry decides: mathematics goes back to v1 and v2 is unloaded
        client.load_adapter("mathematics", 1, str(adapters_dir / "mathematics" / "v1"))
        client.set_routing("mathematics", promoted=1)
        client.unload_adapter("mathematics", 2)
        state = json.loads((adapters_dir / ".endpoint_state.json").read_text())
        assert state["routing"]["mathematics"]["promoted"] == 1
    with start_endpoint(tiny_base_path, adapters_dir, tmp_path, admin_token=token, args=args) as server:
        loaded, routing = served(server.client())
        assert {v for s, v in loaded if s == "mathematics"} == {1}
        assert routing["mathematics"]["promoted"] == 1
        assert {s for s, _ in loaded} == {"history", "mathematics", "language", "general_knowledge"}
