"""A chain to, or a multicast from, owners alike on every line charged from the line priced
once at 1 byte (`comm_groups.charge_owned`) records what `Charge.comm` of the plain pattern on
the grid records (the path `charge_segmented_allreduce` and `charges` take, and still take in
overlap blocks): every field, on both axes, at any size, lines and side, on every device; and
decode attention's head-spread charges equal `charges.charge_reduce_to_owners` and
`charges.charge_multicast` of the spread's (C,) owner maps, routes included."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from waferllm.device import tiny, wse2, wse3
from waferllm.kernels.attention import charge_probs_spread, head_spread
from waferllm.kernels.heads import head_layout
from waferllm.mesh import Axis, Ledger, Mesh, Mode
from waferllm.mesh.charges import charge_multicast, charge_reduce_to_owners
from waferllm.mesh.comm_groups import charge_owned, charge_segmented_allreduce
from waferllm.mesh.cost import Charge
from waferllm.mesh.patterns import Owners, chain_traffic, multicast_traffic

DEVICES = {"wse2": wse2(), "wse3": wse3(), "tiny": tiny()}


def _sides(device, num: int, lines: int) -> tuple[int, int]:
    """`num` and `lines` within the device's smaller side (tiny's 64)."""
    most = min(device.mesh_rows, device.mesh_cols)
    return min(num, most), min(lines, most)


def _grid(axis: Axis, num: int, lines: int) -> tuple[int, int]:
    return (lines, num) if axis is Axis.X else (num, lines)


def _groups(num: int, data) -> tuple[int, ...]:
    """Consecutive group sizes covering `num` cores (within one of each other, or drawn)."""
    count = data.draw(st.integers(1, num))
    if data.draw(st.booleans()):
        base, extra = divmod(num, count)
        return tuple(base + (i < extra) for i in range(count))
    cuts = sorted(data.draw(st.sets(st.integers(1, num - 1), max_size=8))) if num > 1 else []
    edges = [0, *cuts, num]
    return tuple(b - a for a, b in zip(edges, edges[1:], strict=False))


def _owners(num: int, data) -> Owners:
    """Groups, their roots as a one-row map, or a drawn one-row map (any owner per core)."""
    choice = data.draw(st.sampled_from(["groups", "group map", "any map"]))
    sizes = _groups(num, data)
    if choice == "groups":
        return Owners.of_groups(sizes)
    if choice == "group map":
        return Owners.of_map(Owners.of_groups(sizes).array()[0])
    owner = data.draw(st.lists(st.integers(0, num - 1), min_size=num, max_size=num))
    return Owners.of_map(np.array(owner, dtype=np.int64))


def _records(ledger: Ledger) -> list:
    return [r.__dict__ for r in ledger.records]


@settings(max_examples=200, deadline=None)
@given(
    name=st.sampled_from(sorted(DEVICES)),
    num=st.one_of(st.integers(1, 40), st.sampled_from([95, 226, 357, 401, 660, 750])),
    lines=st.sampled_from([1, 2, 5, 357]),
    nbytes=st.sampled_from([0, 1, 2, 3, 64, 1000, 4096 * 3 + 2]),
    axis=st.sampled_from([Axis.X, Axis.Y]),
    kind=st.sampled_from(["chain", "multicast"]),
    data=st.data(),
)
def test_an_owned_charge_records_the_charge_of_the_grid_traffic(
    name, num, lines, nbytes, axis, kind, data
):
    device = DEVICES[name]
    num, lines = _sides(device, num, lines)
    owners = _owners(num, data)
    mesh = Mesh(device, *_grid(axis, num, lines), mode=Mode.ESTIMATE)
    fast, oracle = Ledger(), Ledger()
    charge_owned(mesh, fast, kind, axis=axis, owners=owners, nbytes=nbytes, op="x", phase=0)
    pattern = chain_traffic if kind == "chain" else multicast_traffic
    traffic = pattern.__wrapped__(device, mesh.shape, axis, owners, nbytes)
    oracle.charge("x", Charge.comm(traffic))
    assert _records(fast) == _records(oracle)


@settings(max_examples=100, deadline=None)
@given(
    name=st.sampled_from(sorted(DEVICES)),
    num=st.one_of(st.integers(2, 40), st.sampled_from([226, 357, 660])),
    lines=st.sampled_from([1, 3, 357]),
    numel=st.sampled_from([1, 7, 512, 4096]),
    axis=st.sampled_from([Axis.X, Axis.Y]),
    broadcast=st.booleans(),
    data=st.data(),
)
def test_a_segmented_allreduce_records_its_grid_traffic(
    name, num, lines, numel, axis, broadcast, data
):
    device = DEVICES[name]
    num, lines = _sides(device, num, lines)
    sizes = _groups(num, data)
    mesh = Mesh(device, *_grid(axis, num, lines), mode=Mode.ESTIMATE)
    ledger, oracle = Ledger(), Ledger()
    charge_segmented_allreduce(
        mesh,
        axis=axis,
        group_sizes=sizes,
        numel=numel,
        ledger=ledger,
        op="s",
        broadcast_result=broadcast,
    )
    if max(sizes) > 1:
        owners, nbytes = Owners.of_groups(sizes), numel * device.storage_bytes
        shape = mesh.shape
        oracle.charge(
            "s.reduce", Charge.comm(chain_traffic.__wrapped__(device, shape, axis, owners, nbytes))
        )
        if broadcast:
            bcast = multicast_traffic.__wrapped__(device, shape, axis, owners, nbytes)
            oracle.charge("s.bcast", Charge.comm(bcast), phase=1)
    assert _records(ledger) == _records(oracle)


def test_a_segmented_allreduce_in_an_overlap_block_still_merges_traffics():
    """In an overlap block the reduce and the multicast (phase 1) join the step as traffics."""
    device, sizes = wse2(), (3, 4, 5)
    mesh = Mesh(device, 4, 12, mode=Mode.ESTIMATE)
    ledger, oracle = Ledger(), Ledger()
    with ledger.overlap("step"):
        charge_segmented_allreduce(
            mesh, axis=Axis.X, group_sizes=sizes, numel=64, ledger=ledger, op="s"
        )
    owners, nbytes = Owners.of_groups(sizes), 64 * device.storage_bytes
    with oracle.overlap("step"):
        chain = chain_traffic.__wrapped__(device, mesh.shape, Axis.X, owners, nbytes)
        oracle.charge("s.reduce", Charge.comm(chain))
        bcast = multicast_traffic.__wrapped__(device, mesh.shape, Axis.X, owners, nbytes)
        oracle.charge("s.bcast", Charge.comm(bcast), phase=1)
    assert len(ledger.records) == 1 and _records(ledger) == _records(oracle)


@settings(max_examples=120, deadline=None)
@given(
    name=st.sampled_from(sorted(DEVICES)),
    kv=st.sampled_from([1, 2, 4, 8]),
    n_rep=st.sampled_from([1, 2, 4, 8]),
    head_dim=st.sampled_from([16, 64, 128]),
    cols=st.integers(2, 720),
    rows=st.sampled_from([1, 4, 357]),
    numel=st.sampled_from([1, 5, 96, 4096]),
)
def test_the_probs_spread_charges_equal_the_charges_of_its_owner_maps(
    name, kv, n_rep, head_dim, cols, rows, numel
):
    device = DEVICES[name]
    cols, rows = _sides(device, cols, rows)
    heads = head_layout(kv, n_rep, head_dim, cols)
    spread = head_spread(heads)
    if spread is None:
        return
    nbytes = numel * device.storage_bytes
    fast_mesh = Mesh(device, rows, cols, mode=Mode.ESTIMATE)
    old_mesh = Mesh(device, rows, cols, mode=Mode.ESTIMATE)
    fast, oracle = Ledger(), Ledger()
    charge_probs_spread(fast_mesh, spread, nbytes=nbytes, ledger=fast)
    gather, root = spread.gather_owner.array()[0], spread.root.array()[0]
    if spread.cores > 1:
        charge_reduce_to_owners(
            old_mesh, axis=Axis.X, owner=gather, nbytes=nbytes, ledger=oracle, op="probs.gather"
        )
    charge_multicast(
        old_mesh, axis=Axis.X, owner=root, nbytes=nbytes, ledger=oracle, op="probs.bcast"
    )
    assert _records(fast) == _records(oracle)
    assert fast_mesh.routes.sets == old_mesh.routes.sets
    assert Owners.of_map(gather) == spread.gather_owner and Owners.of_map(root) == spread.root


def test_owners_that_differ_per_line_are_charged_from_the_grid_traffic():
    device, axis = wse2(), Axis.X
    owner = np.array([[0, 0, 2, 2, 2, 5], [1, 1, 1, 4, 4, 4], [0, 0, 2, 2, 2, 5]])
    owners = Owners.of_map(owner)
    mesh = Mesh(device, 3, 6, mode=Mode.ESTIMATE)
    for kind, pattern in (("chain", chain_traffic), ("multicast", multicast_traffic)):
        fast, oracle = Ledger(), Ledger()
        charge_owned(mesh, fast, kind, axis=axis, owners=owners, nbytes=96, op="x")
        traffic = pattern.__wrapped__(device, mesh.shape, axis, owners, 96)
        oracle.charge("x", Charge.comm(traffic))
        assert _records(fast) == _records(oracle)
