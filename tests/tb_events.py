"""TensorBoard event files as TensorBoard reads them, without TensorBoard (tensorboardX's protos)."""

from __future__ import annotations

import struct


def events(path) -> list:
  """The Event protos of one TensorBoard event file (TFRecord: length, crc, data, crc)."""
  from tensorboardX.proto import event_pb2

  data, found, at = path.read_bytes(), [], 0
  while at < len(data):
    (n,) = struct.unpack("<Q", data[at : at + 8])
    event = event_pb2.Event()
    event.ParseFromString(data[at + 12 : at + 12 + n])
    found.append(event)
    at += 12 + n + 4
  return found


def shown(logdir) -> dict[str, list[tuple[int, float]]]:
  """What TensorBoard shows of a run's scalars: event files in name order, and on a
  SessionLog START at step s the events at s and later read so far dropped (its
  EventAccumulator's purge of orphaned data)."""
  from tensorboardX.proto import event_pb2

  view: dict[str, list[tuple[int, float]]] = {}
  for path in sorted(logdir.glob("events.out.tfevents.*")):
    for event in events(path):
      if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
        view = {tag: [(s, v) for s, v in points if s < event.step] for tag, points in view.items()}
      for value in event.summary.value:
        view.setdefault(value.tag, []).append((event.step, round(value.simple_value, 6)))
  return view
