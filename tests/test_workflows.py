"""The example workflows (UI format) only use nodes that exist, and every link joins matching types.

Our nodes' sockets come from their schemas (through tests/comfy_stub); core nodes' from
tests/data/comfyui_core_nodes.json, extracted once from a real ComfyUI 0.29 server's /object_info.
"""

from __future__ import annotations

import json
import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "tests" / "comfy_stub"))  # ComfyUI's API stand-in
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from comfy_api.latest import io

WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
CORE = json.loads((REPO / "tests" / "data" / "comfyui_core_nodes.json").read_text())
WIDGETS = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
PEOPLE = {"AnyTalker - one person.json": 1, "AnyTalker - two people.json": 2, "AnyTalker - three people.json": 3}


def our_signatures() -> dict[str, dict]:
    """node id → inputs {name: type}, autogrow {name: (prefix, type, max)}, widgets [...], outputs [types]."""
    from nodes import NODES

    out = {}
    for node in NODES:
        schema = node.define_schema()
        inputs, autogrow, widgets = {}, {}, []
        for inp in schema.inputs:
            if isinstance(inp, io.Autogrow.Input):
                t = inp.template
                autogrow[inp.id] = (t.prefix, t.input.io_type, t.max)
                continue
            inputs[inp.id] = inp.io_type
            if inp.io_type in WIDGETS:
                widgets.append(inp.id)
                if inp.kwargs.get("control_after_generate"):
                    widgets.append(f"{inp.id}:control")
        out[schema.node_id] = {"inputs": inputs, "autogrow": autogrow, "widgets": widgets,
                               "outputs": [o.io_type for o in schema.outputs]}
    return out


OURS = our_signatures()


def signature(node_type: str) -> dict:
    if node_type in OURS:
        return OURS[node_type]
    assert node_type in CORE["names"], f"unknown node type {node_type!r} (not ours, not in ComfyUI core)"
    assert node_type in CORE["signatures"], (
        f"core node {node_type!r} is used by a workflow: add its signature from /object_info to "
        "tests/data/comfyui_core_nodes.json")
    sig = CORE["signatures"][node_type]
    return {"inputs": sig["inputs"], "autogrow": {}, "widgets": None, "outputs": sig["outputs"]}


def input_type(sig: dict, name: str) -> str:
    if name in sig["inputs"]:
        return sig["inputs"][name]
    group, _, slot = name.partition(".")
    if group in sig["autogrow"]:
        prefix, typ, most = sig["autogrow"][group]
        assert slot.startswith(prefix) and 0 <= int(slot[len(prefix):]) < most, name
        return typ
    raise AssertionError(f"input {name!r} does not exist")


def test_there_are_workflows_for_one_two_and_three_people():
    assert set(PEOPLE) <= {p.name for p in WORKFLOWS}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_nodes_and_links(path):
    wf = json.loads(path.read_text())
    nodes = {n["id"]: n for n in wf["nodes"]}
    assert len(nodes) == len(wf["nodes"]) and wf["last_node_id"] == max(nodes)
    for node in nodes.values():
        sig = signature(node["type"])
        assert [o["type"] for o in node["outputs"]] == sig["outputs"], node["type"]
        for inp in node["inputs"]:
            assert input_type(sig, inp["name"]) in (inp["type"], "*"), (node["type"], inp["name"])
        if sig["widgets"] is not None:  # ours: one value per widget, in schema order
            assert len(node["widgets_values"]) == len(sig["widgets"]), (node["type"], node["widgets_values"])
    seen_links = set()
    for link_id, src, src_slot, dst, dst_slot, typ in wf["links"]:
        assert link_id not in seen_links
        seen_links.add(link_id)
        out = nodes[src]["outputs"][src_slot]
        inp = nodes[dst]["inputs"][dst_slot]
        assert out["type"] == typ and link_id in out["links"], (link_id, nodes[src]["type"], out)
        assert inp["link"] == link_id, (link_id, nodes[dst]["type"], inp)
        want = input_type(signature(nodes[dst]["type"]), inp["name"])
        assert want in (typ, "*"), f"link {link_id}: {typ} into {nodes[dst]['type']}.{inp['name']} ({want})"
    assert wf["last_link_id"] == max(seen_links)
    dangling = [(n["type"], i["name"]) for n in nodes.values() for i in n["inputs"] if i["link"] not in (None, *seen_links)]
    assert not dangling


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_required_inputs_are_connected(path):
    """Every non-widget input that our schema requires has a link (the graph would run)."""
    from nodes import NODES

    wf = json.loads(path.read_text())
    schemas = {n.__name__: n.define_schema() for n in NODES}
    for node in wf["nodes"]:
        if node["type"] not in schemas:
            continue
        linked = {i["name"] for i in node["inputs"] if i["link"] is not None}
        for inp in schemas[node["type"]].inputs:
            if isinstance(inp, io.Autogrow.Input):
                assert sum(n.startswith(inp.id + ".") for n in linked) >= inp.template.min
            elif inp.io_type not in WIDGETS and not inp.optional:
                assert inp.id in linked, f"{path.name}: {node['type']}.{inp.id} is not connected"


@pytest.mark.parametrize("name,people", sorted(PEOPLE.items()))
def test_people_count_matches_the_audio_inputs(name, people):
    wf = json.loads((REPO / "workflows" / name).read_text())
    nodes = {n["id"]: n for n in wf["nodes"]}
    encode = next(n for n in nodes.values() if n["type"] == "AnyTalkerAudioEncode")
    speakers = [i for i in encode["inputs"] if i["name"].startswith("speakers.") and i["link"] is not None]
    assert len(speakers) == people
    links = {row[0]: row for row in wf["links"]}
    assert all(nodes[links[i["link"]][1]]["type"] == "LoadAudio" for i in speakers)
    faces = next(n for n in nodes.values() if n["type"] == "AnyTalkerFaceMasks")
    people_in = next(i for i in faces["inputs"] if i["name"] == "people")
    assert links[people_in["link"]][1] == encode["id"]  # the face count follows the audio count
    video = next(n for n in nodes.values() if n["type"] == "CreateVideo")
    assert video["widgets_values"][0] == 24  # the model's frame rate
