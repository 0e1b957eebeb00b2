"""Read back what W&B wrote offline: the `.wandb` file is a LevelDB-style log of protobuf records."""

from __future__ import annotations

import struct
from pathlib import Path

BLOCK = 32768
HEADER = 7  # ':W&B', a 2-byte magic, a 1-byte version
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path, timeout: float = 60.0) -> list:
    """Every record in an offline run's `.wandb` file, as `wandb_internal_pb2.Record` objects.

    W&B's writer is a separate process that may still be flushing when `run.finish()` returns, so this
    waits (up to `timeout` seconds) for the run's closing `exit` record.
    """
    import time

    deadline = time.monotonic() + timeout
    while True:
        records = _read(path)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.5)


def _read(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    records, pending, offset = [], b"", HEADER
    while offset + HEADER <= len(data):
        room = BLOCK - offset % BLOCK
        if room < HEADER:  # the tail of a block too short for a record header is padding
            offset += room
            continue
        _, length, kind = struct.unpack("<IHB", data[offset: offset + HEADER])
        if kind == 0 and length == 0:
            break
        chunk = data[offset + HEADER: offset + HEADER + length]
        offset += HEADER + length
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def history_keys(path: Path) -> set[str]:
    keys = set()
    for record in read_records(path):
        if record.WhichOneof("record_type") == "history":
            keys |= {item.key or "/".join(item.nested_key) for item in record.history.item}
    return keys


def chart_specs(path: Path) -> dict[str, str]:
    """Custom charts (e.g. wandb.plot.line) by key -> their panel definition id."""
    import json

    charts = {}
    for record in read_records(path):
        if record.WhichOneof("record_type") == "config":
            for item in record.config.update:
                keys = list(item.nested_key)
                if keys[:2] == ["_wandb", "visualize"]:
                    charts[keys[2]] = json.loads(item.value_json)["panel_config"]["panelDefId"]
    return charts
