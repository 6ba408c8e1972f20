package main

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"net/http"
	"sync"

	"golang.org/x/crypto/bcrypt"
)

// authenticator checks HTTP Basic credentials against bcrypt hashes. A
// bcrypt check costs tens of milliseconds by design, so verified
// credentials are remembered as an HMAC (keyed with a per-instance random
// key) of user and password: the password itself is never kept.
type authenticator struct {
	users map[string][]byte
	realm string
	// dummy is compared for unknown users so they take as long as known ones.
	dummy []byte
	key   [32]byte

	mu   sync.Mutex
	good map[[32]byte]bool
}

const maxAuthCache = 1024

func newAuthenticator(users []User, realm string) *authenticator {
	a := &authenticator{users: map[string][]byte{}, realm: realm, good: map[[32]byte]bool{}}
	for _, u := range users {
		a.users[u.Name] = []byte(u.PasswordBcrypt)
	}
	if _, err := rand.Read(a.key[:]); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	cost := bcrypt.MinCost
	if len(users) > 0 {
		if c, err := bcrypt.Cost([]byte(users[0].PasswordBcrypt)); err == nil {
			cost = c
		}
	}
	a.dummy, _ = bcrypt.GenerateFromPassword([]byte("not a password"), cost)
	return a
}

func (a *authenticator) mac(user, pass string) [32]byte {
	m := hmac.New(sha256.New, a.key[:])
	m.Write([]byte(user))
	m.Write([]byte{0})
	m.Write([]byte(pass))
	var out [32]byte
	copy(out[:], m.Sum(nil))
	return out
}

// check returns the user name when r carries valid credentials.
func (a *authenticator) check(r *http.Request) (string, bool) {
	user, pass, ok := r.BasicAuth()
	if !ok {
		return "", false
	}
	k := a.mac(user, pass)
	a.mu.Lock()
	hit := a.good[k]
	a.mu.Unlock()
	if hit {
		return user, true
	}
	hash, known := a.users[user]
	if !known {
		bcrypt.CompareHashAndPassword(a.dummy, []byte(pass))
		return "", false
	}
	if bcrypt.CompareHashAndPassword(hash, []byte(pass)) != nil {
		return "", false
	}
	a.mu.Lock()
	if len(a.good) >= maxAuthCache {
		clear(a.good)
	}
	a.good[k] = true
	a.mu.Unlock()
	return user, true
}

func (a *authenticator) deny(w http.ResponseWriter) {
	w.Header().Set("WWW-Authenticate", `Basic realm="`+a.realm+`", charset="UTF-8"`)
	writeErr(w, http.StatusUnauthorized, "authentication required: HTTP Basic credentials of a configured user")
}
