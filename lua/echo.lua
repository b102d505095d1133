-- Answers with the request it received, as JSON: any method, e.g.
--   curl -X POST 'localhost:8080/lua/echo?a=1&status=201' -d 'hi'
-- `?status=` picks the status of the answer (200 by default).
local status = tonumber(request.query.status) or 200
response(json.encode(request), status, {
  ["content-type"] = "application/json",
  ["x-echo-method"] = request.method,
})
