package main

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/plugd/plugd/sdk"
)

// Store keys. Ids are ObjectId-style (time first), so key order is creation
// order.
const (
	kApp      = "app/"      // app/<id> -> App
	kVersion  = "version/"  // version/<appid>/<id> -> Version
	kChannel  = "channel/"  // channel/<appid>/<id> -> Channel
	kBuild    = "build/"    // build/<id> -> Build
	kAppBuild = "appbuild/" // appbuild/<appid>/<buildid> -> "" (history index)
	kActive   = "active/"   // active/<buildid> -> activeEntry (queued or running)
	kLease    = "lease/"    // lease/<buildid> -> leaseEntry, with a TTL, renewed by the runner
	kHandover = "handover/" // handover/<buildid> -> handoverEntry, offered by a stopping instance
	kInstance = "instance/" // instance/<token> -> leaseEntry, with a TTL: live instances
)

// App is an application (seed: App).
type App struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Platforms []string  `json:"platforms"`
	Created   time.Time `json:"created"`
	Updated   time.Time `json:"updated"`
	Forbidden bool      `json:"forbidden"`
	// Validate is false once the app is deleted (soft delete).
	Validate bool `json:"validate"`
}

// Version is a version of an app on one platform (seed: Version).
type Version struct {
	ID       string    `json:"id"`
	AppID    string    `json:"appid"`
	Code     string    `json:"code"`
	Name     string    `json:"name"`
	Platform string    `json:"platform"`
	GitTag   string    `json:"git_tag,omitempty"`
	GitIndex string    `json:"git_index,omitempty"`
	Created  time.Time `json:"created"`
	Updated  time.Time `json:"updated"`
}

// Channel is a distribution channel (an app store) of an app (seed: Channel).
type Channel struct {
	ID       string    `json:"id"`
	AppID    string    `json:"appid"`
	Code     string    `json:"code"`
	Name     string    `json:"name"`
	Platform string    `json:"platform"`
	Created  time.Time `json:"created"`
	Updated  time.Time `json:"updated"`
}

// The seed's structs name the field "platform", its JSON examples
// "platforms": versions and channels are written with both (same value),
// and either is accepted on input (platformField).

func (v Version) MarshalJSON() ([]byte, error) {
	type plain Version
	return json.Marshal(struct {
		plain
		Platforms string `json:"platforms"`
	}{plain(v), v.Platform})
}

func (c Channel) MarshalJSON() ([]byte, error) {
	type plain Channel
	return json.Marshal(struct {
		plain
		Platforms string `json:"platforms"`
	}{plain(c), c.Platform})
}

// idCounter and idSalt make ids from one instance unique and ordered;
// idSalt (random per instance) keeps two instances generating in the same
// tick apart.
var (
	idCounter atomic.Uint32
	idSalt    [3]byte
)

func init() {
	var b [4]byte
	rand.Read(b[:])
	// Start in the lower half of the 24 bits used, so the counter does not
	// wrap (and sort backwards) before 8M ids.
	idCounter.Store(binary.BigEndian.Uint32(b[:]) & (1<<23 - 1))
	rand.Read(idSalt[:])
}

// newID returns a 24-hex id that sorts in creation order, which the
// history index and retention rely on: 4 bytes of Unix seconds (as in an
// ObjectId, so older ids still sort before newer ones), 2 bytes of the
// fraction of the second, 3 bytes of per-instance salt and a 3-byte counter.
func newID() string {
	now := time.Now()
	var b [12]byte
	binary.BigEndian.PutUint32(b[0:4], uint32(now.Unix()))
	binary.BigEndian.PutUint16(b[4:6], uint16(uint64(now.Nanosecond())<<16/1e9))
	copy(b[6:9], idSalt[:])
	c := idCounter.Add(1)
	b[9], b[10], b[11] = byte(c>>16), byte(c>>8), byte(c)
	return hex.EncodeToString(b[:])
}

var idRE = regexp.MustCompile(`^[0-9a-f]{24}$`)

func validID(s string) bool { return idRE.MatchString(s) }

// codeRE limits channel codes to what is safe in file names, URLs and
// environment variables.
var codeRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

const maxNameLen = 200

func checkName(field, s string) error {
	if strings.TrimSpace(s) == "" {
		return badRequest("%s must not be empty", field)
	}
	if utf8.RuneCountInString(s) > maxNameLen || !utf8.ValidString(s) {
		return badRequest("%s must be valid UTF-8 of at most %d characters", field, maxNameLen)
	}
	return nil
}

func badRequest(format string, args ...any) error {
	return sdk.Errorf(http.StatusBadRequest, format, args...)
}

func notFound(format string, args ...any) error {
	return sdk.Errorf(http.StatusNotFound, format, args...)
}

// platformField accepts the seed's "platform" and, as its examples spell
// it, "platforms" (a string) for versions and channels.
type platformField struct {
	Platform  *string `json:"platform"`
	Platforms *string `json:"platforms"`
}

func (f platformField) get() (*string, error) {
	switch {
	case f.Platform != nil && f.Platforms != nil && *f.Platform != *f.Platforms:
		return nil, badRequest("platform %q and platforms %q disagree", *f.Platform, *f.Platforms)
	case f.Platform != nil:
		return f.Platform, nil
	default:
		return f.Platforms, nil
	}
}

// readOnly are fields clients may send back from a GET; they are ignored.
type readOnly struct {
	ID      *string         `json:"id"`
	AppID   *string         `json:"appid"`
	Created json.RawMessage `json:"created"`
	Updated json.RawMessage `json:"updated"`
}

func (ro readOnly) check(id string) error {
	if ro.ID != nil && *ro.ID != "" && id != "" && *ro.ID != id {
		return badRequest("id %q in the body does not match the URL", *ro.ID)
	}
	return nil
}

type appInput struct {
	readOnly
	Name      *string         `json:"name"`
	Platforms *[]string       `json:"platforms"`
	Forbidden *bool           `json:"forbidden"`
	Validate  json.RawMessage `json:"validate"` // read-only: DELETE clears it
}

type versionInput struct {
	readOnly
	platformField
	Code     *string `json:"code"`
	Name     *string `json:"name"`
	GitTag   *string `json:"git_tag"`
	GitIndex *string `json:"git_index"`
}

type channelInput struct {
	readOnly
	platformField
	Code *string `json:"code"`
	Name *string `json:"name"`
}

func checkPlatforms(ps []string) error {
	if len(ps) == 0 {
		return badRequest("platforms must list at least one of android, ios")
	}
	seen := map[string]bool{}
	for _, p := range ps {
		if !validPlatform(p) {
			return badRequest("platform %q is not android or ios", p)
		}
		if seen[p] {
			return badRequest("platform %q listed twice", p)
		}
		seen[p] = true
	}
	return nil
}

// getJSON reads and decodes one record; sdk.ErrNotFound passes through.
func getJSON(tx sdk.Tx, key string, v any) error {
	b, err := tx.Get(key)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("decode %s: %w", key, err)
	}
	return nil
}

func putJSON(tx sdk.Tx, key string, v any, opts ...sdk.PutOption) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return tx.Put(key, b, opts...)
}

// liveApp loads an app that exists and is not deleted.
func liveApp(tx sdk.Tx, id string) (*App, error) {
	if !validID(id) {
		return nil, notFound("app %q not found", id)
	}
	var a App
	if err := getJSON(tx, kApp+id, &a); err != nil {
		if errors.Is(err, sdk.ErrNotFound) {
			return nil, notFound("app %s not found", id)
		}
		return nil, err
	}
	if !a.Validate {
		return nil, notFound("app %s not found (deleted)", id)
	}
	return &a, nil
}

func decodeRecord[T any](b []byte) (*T, error) {
	v := new(T)
	if err := json.Unmarshal(b, v); err != nil {
		return nil, err
	}
	return v, nil
}

func listJSON[T any](tx sdk.Tx, prefix string) ([]T, error) {
	kvs, err := tx.List(prefix)
	if err != nil {
		return nil, err
	}
	out := make([]T, 0, len(kvs))
	for _, kv := range kvs {
		var v T
		if err := json.Unmarshal(kv.Value, &v); err != nil {
			return nil, fmt.Errorf("decode %s: %w", kv.Key, err)
		}
		out = append(out, v)
	}
	return out, nil
}

// view runs fn in a store transaction that changes nothing.
func (p *plugin) view(ctx context.Context, fn func(tx sdk.Tx) error) error {
	return p.store.Update(ctx, fn)
}
