wrk.method = "POST"
wrk.body = '{"prompt": "a cat in a hat", "steps": 30}'
wrk.headers["Content-Type"] = "application/json"
