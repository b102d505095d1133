// The gin + Lua peer: seed 001's own shape. The Go guide skiff competes with
// serves /lua from gin with a new Lua state per request and a Go-side
// `response` function that the script calls to set the answer. The guide
// binds C Lua through cgo, which Debian does not package; this peer uses
// gopher-lua (pure Go, Lua 5.1, Debian's golang-github-yuin-gopher-lua-dev)
// instead, the nearest thing that builds offline. Same chunk as skiff's /lua.
package main

import (
	"net/http"
	"os"

	"github.com/gin-gonic/gin"
	lua "github.com/yuin/gopher-lua"
)

const chunk = `response 'hello world'`

func runLua(c *gin.Context) {
	L := lua.NewState()
	defer L.Close()
	answered := false
	L.SetGlobal("response", L.NewFunction(func(L *lua.LState) int {
		c.String(http.StatusOK, L.CheckString(1))
		answered = true
		return 0
	}))
	if err := L.DoString(chunk); err != nil {
		c.String(http.StatusInternalServerError, err.Error())
		return
	}
	if !answered {
		c.String(http.StatusInternalServerError, "the script did not call response")
	}
}

func main() {
	gin.SetMode(gin.ReleaseMode)
	// gin.Default() minus its Logger: no peer writes an access log in the bench.
	r := gin.New()
	r.Use(gin.Recovery())
	r.GET("/hello", func(c *gin.Context) {
		c.String(http.StatusOK, "hello")
	})
	r.GET("/lua", runLua)
	r.Run("127.0.0.1:" + os.Getenv("PORT"))
}
