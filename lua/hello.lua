-- GET /lua/hello?name=Ada answers "Hello, Ada!".
--
-- A script sees the global `request` (method, path, query, headers, body)
-- and answers with response(body [, status [, headers]]).
local name = request.query.name or "world"
log("greeting " .. name)
response("Hello, " .. name .. "!\n")
