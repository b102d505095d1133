-- GET of the URL's path (/hello, /time, /lua): only the report is needed.
package.path = os.getenv("BENCH_LUA_DIR") .. "/?.lua;" .. package.path
require "report"
