"""A scripted OpenAI-compatible expert server, run as its own process so a test can kill it.

    python tests/expert_server.py LOG ACTION [ACTION ...]

Prints its port on the first line of stdout. POST .../chat/completions takes the next action
(the last one repeats) and appends "<role> <action>" to LOG:
  ok       a valid reply for the role (planner order, voter probabilities, critique)
  500      HTTP 500
  garbled  a body that is not JSON
  badjson  a well-formed reply whose content is not the JSON the role asks for
  sleep    answers only after 30 s (the client times out first)
GET /v1/models lists one model.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REPLIES = {
  "planner": '{"order": ["self_consistency", "self_reflection", "visual_self_check"]}',
  "voter": '{"A1": 1.0}',
  "critic": "Look at the image again: count the marked parts one by one.",
}


def role_of(body: dict) -> str:
  system = body["messages"][0]["content"]
  for role in ("plans", "checks", "reviews"):
    if role in system:
      return {"plans": "planner", "checks": "voter", "reviews": "critic"}[role]
  return "chat"


def main() -> None:
  log, actions = sys.argv[1], sys.argv[2:]
  lock = threading.Lock()

  class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
      pass

    def reply(self, code: int, body: bytes) -> None:
      self.send_response(code)
      self.send_header("Content-Type", "application/json")
      self.send_header("Content-Length", str(len(body)))
      self.end_headers()
      self.wfile.write(body)

    def do_GET(self):
      self.reply(200, json.dumps({"data": [{"id": "scripted"}]}).encode())

    def do_POST(self):
      body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
      role = role_of(body)
      with lock:
        action = actions.pop(0) if len(actions) > 1 else actions[0]
        with open(log, "a") as f:
          f.write(f"{role} {action}\n")
      if action == "500":
        return self.reply(500, b'{"error": "internal"}')
      if action == "garbled":
        return self.reply(200, b"<html>502 bad gateway")
      if action == "sleep":
        time.sleep(30)
      content = "I would rather not say." if action == "badjson" else REPLIES.get(role, "ok")
      message = {"role": "assistant", "content": content}
      choice = {"index": 0, "finish_reason": "stop", "message": message}
      self.reply(
        200, json.dumps({"id": "x", "object": "chat.completion", "created": 0, "choices": [choice]}).encode()
      )

  server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
  server.daemon_threads = True
  print(server.server_address[1], flush=True)
  server.serve_forever()


if __name__ == "__main__":
  main()
