// The gin peer: /hello, /time and an in-memory users store, written the way
// gin's README and the Go tour would. Users live in a map behind a
// sync.RWMutex: nothing is durable, unlike skiff's SQLite/PostgreSQL store.
package main

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"
	_ "time/tzdata" // compile the tz database in, as skiff does

	"github.com/gin-gonic/gin"
)

type User struct {
	ID             string    `json:"id"`
	Email          string    `json:"email" binding:"required,email,max=254"`
	AccountEnabled bool      `json:"accountEnabled"`
	DisplayName    string    `json:"displayName" binding:"max=256"`
	GivenName      string    `json:"givenName" binding:"max=256"`
	Surname        string    `json:"surname" binding:"max=256"`
	CompanyName    string    `json:"companyName" binding:"max=256"`
	CreatedAt      time.Time `json:"createdAt"`
	UpdatedAt      time.Time `json:"updatedAt"`
}

type store struct {
	sync.RWMutex
	byID    map[string]User
	byEmail map[string]string
}

var users = store{byID: map[string]User{}, byEmail: map[string]string{}}

func newID() string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func getUser(c *gin.Context) {
	users.RLock()
	u, ok := users.byID[c.Param("id")]
	users.RUnlock()
	if !ok {
		c.JSON(http.StatusNotFound, gin.H{"error": "not found"})
		return
	}
	c.JSON(http.StatusOK, u)
}

// findUsers answers GET /users?email=: the users whose email matches,
// ignoring case. A map has no order, so there is no paged list (501).
func findUsers(c *gin.Context) {
	email, ok := c.GetQuery("email")
	if !ok {
		c.JSON(http.StatusNotImplemented, gin.H{"error": "no list: a map has no order"})
		return
	}
	found := []User{}
	users.RLock()
	if id, ok := users.byEmail[strings.ToLower(email)]; ok {
		found = append(found, users.byID[id])
	}
	users.RUnlock()
	c.JSON(http.StatusOK, found)
}

// seed loads users from SEED_FILE (lines "id<TAB>email"), for the bench's
// scale scenario: a million users in a second instead of 40 s of POSTs.
func seed(path string) {
	f, err := os.Open(path)
	if err != nil {
		panic(err)
	}
	defer f.Close()
	now := time.Now().UTC().Truncate(time.Millisecond)
	lines := bufio.NewScanner(f)
	for lines.Scan() {
		id, email, _ := strings.Cut(lines.Text(), "\t")
		users.byID[id] = User{ID: id, Email: email, AccountEnabled: true, DisplayName: "Scale User",
			GivenName: "Scale", Surname: "User", CompanyName: "skiff bench", CreatedAt: now, UpdatedAt: now}
		users.byEmail[strings.ToLower(email)] = id
	}
	if err := lines.Err(); err != nil {
		panic(err)
	}
}

func createUser(c *gin.Context) {
	var u User
	if err := c.ShouldBindJSON(&u); err != nil {
		c.JSON(http.StatusBadRequest, gin.H{"error": err.Error()})
		return
	}
	u.ID = newID()
	u.CreatedAt = time.Now().UTC().Truncate(time.Millisecond)
	u.UpdatedAt = u.CreatedAt
	key := strings.ToLower(u.Email)
	users.Lock()
	if _, taken := users.byEmail[key]; taken {
		users.Unlock()
		c.JSON(http.StatusConflict, gin.H{"error": "email already in use"})
		return
	}
	users.byID[u.ID] = u
	users.byEmail[key] = u.ID
	users.Unlock()
	c.Header("Location", "/users/"+u.ID)
	c.JSON(http.StatusCreated, u)
}

func main() {
	tokyo, err := time.LoadLocation("Asia/Tokyo")
	if err != nil {
		panic(err)
	}
	if path := os.Getenv("SEED_FILE"); path != "" {
		seed(path)
	}
	gin.SetMode(gin.ReleaseMode)
	// gin.Default() minus its Logger: no peer writes an access log in the bench.
	r := gin.New()
	r.Use(gin.Recovery())
	r.GET("/hello", func(c *gin.Context) {
		c.String(http.StatusOK, "hello")
	})
	r.GET("/time", func(c *gin.Context) {
		now := time.Now().In(tokyo)
		abbr, _ := now.Zone()
		c.JSON(http.StatusOK, gin.H{
			"timeZone":     "Asia/Tokyo",
			"time":         now.Format("2006-01-02T15:04:05.000Z07:00"),
			"utcOffset":    now.Format("-07:00"),
			"abbreviation": abbr,
		})
	})
	r.GET("/users/:id", getUser)
	r.POST("/users", createUser)
	r.GET("/users", findUsers)
	r.Run("127.0.0.1:" + os.Getenv("PORT"))
}
