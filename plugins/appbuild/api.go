package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"runtime/debug"
	"slices"
	"strings"
	"time"

	"github.com/plugd/plugd/sdk"
)

func writeErr(w http.ResponseWriter, status int, msg string) {
	sdk.WriteJSON(w, status, map[string]string{"error": msg})
}

func (p *plugin) fail(w http.ResponseWriter, r *http.Request, err error) {
	st := sdk.StatusOf(err)
	if st >= 500 {
		p.h.Logger().WithError(err).WithField("path", r.URL.Path).Error("request failed")
	}
	sdk.WriteError(w, err)
}

func methodNotAllowed(w http.ResponseWriter, allow ...string) {
	w.Header().Set("Allow", strings.Join(allow, ", "))
	writeErr(w, http.StatusMethodNotAllowed, "method not allowed; allowed: "+strings.Join(allow, ", "))
}

// ServeHTTP routes the API. Paths (after the host strips /appbuild/v1):
//
//	/api/app[/:id]                        App CRUD
//	/api/app/:appid/version[/:id]         Version CRUD
//	/api/app/:appid/channel[/:id]         Channel CRUD
//	/api/app/:appid/build                 build history
//	/api/build                            POST: start a build
//	/api/build/status/:appid              {"running": bool}
//	/api/build/:id                        build record
//	/api/build/:id/log[?follow=1]         build log
//	/api/build/:id/cancel                 POST: cancel
//	/api/build/:id/download               package download URLs per channel
//	/api/apk/channel                      POST an APK body: its channel
//	/download/:build/:file                artifact (Range supported)
func (p *plugin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	defer func() {
		if v := recover(); v != nil {
			p.h.Logger().WithField("panic", v).WithField("stack", string(debug.Stack())).Error("handler panic")
			writeErr(w, http.StatusInternalServerError, "internal error")
		}
	}()
	seg := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	public := p.cfg.PublicDownloads && len(seg) > 0 && seg[0] == "download"
	if !public {
		if _, ok := p.auth.check(r); !ok {
			p.auth.deny(w)
			return
		}
	}
	switch {
	case len(seg) == 3 && seg[0] == "download":
		p.download(w, r, seg[1], seg[2])
	case len(seg) >= 2 && seg[0] == "api" && seg[1] == "app":
		p.routeApp(w, r, seg[2:])
	case len(seg) >= 2 && seg[0] == "api" && seg[1] == "build":
		p.routeBuild(w, r, seg[2:])
	case len(seg) == 3 && seg[0] == "api" && seg[1] == "apk" && seg[2] == "channel":
		p.readChannel(w, r)
	default:
		writeErr(w, http.StatusNotFound, "no such endpoint: "+r.URL.Path)
	}
}

func (p *plugin) routeApp(w http.ResponseWriter, r *http.Request, seg []string) {
	switch len(seg) {
	case 0:
		switch r.Method {
		case http.MethodGet:
			p.listApps(w, r)
		case http.MethodPost:
			p.createApp(w, r)
		default:
			methodNotAllowed(w, "GET", "POST")
		}
		return
	case 1:
		switch r.Method {
		case http.MethodGet:
			p.getApp(w, r, seg[0])
		case http.MethodPut:
			p.updateApp(w, r, seg[0])
		case http.MethodDelete:
			p.deleteApp(w, r, seg[0])
		default:
			methodNotAllowed(w, "GET", "PUT", "DELETE")
		}
		return
	}
	appID, kind := seg[0], seg[1]
	if kind == "build" && len(seg) == 2 {
		if r.Method != http.MethodGet {
			methodNotAllowed(w, "GET")
			return
		}
		p.buildHistory(w, r, appID)
		return
	}
	var k subKind
	switch kind {
	case "version":
		k = versions
	case "channel":
		k = channels
	default:
		writeErr(w, http.StatusNotFound, "no such endpoint: "+r.URL.Path)
		return
	}
	switch {
	case len(seg) == 2 && r.Method == http.MethodGet:
		p.listSub(w, r, k, appID)
	case len(seg) == 2 && r.Method == http.MethodPost:
		p.saveSub(w, r, k, appID, "")
	case len(seg) == 2:
		methodNotAllowed(w, "GET", "POST")
	case len(seg) == 3 && r.Method == http.MethodGet:
		p.getSub(w, r, k, appID, seg[2])
	case len(seg) == 3 && r.Method == http.MethodPut:
		p.saveSub(w, r, k, appID, seg[2])
	case len(seg) == 3 && r.Method == http.MethodDelete:
		p.deleteSub(w, r, k, appID, seg[2])
	case len(seg) == 3:
		methodNotAllowed(w, "GET", "PUT", "DELETE")
	default:
		writeErr(w, http.StatusNotFound, "no such endpoint: "+r.URL.Path)
	}
}

func (p *plugin) decode(r *http.Request, v any) error {
	return sdk.DecodeJSON(r, v, p.cfg.MaxBodyBytes)
}

// ---- apps

func (p *plugin) listApps(w http.ResponseWriter, r *http.Request) {
	kvs, err := p.store.List(r.Context(), kApp)
	if err != nil {
		p.fail(w, r, err)
		return
	}
	out := make([]App, 0, len(kvs))
	for _, kv := range kvs {
		var a App
		if err := json.Unmarshal(kv.Value, &a); err != nil {
			p.fail(w, r, fmt.Errorf("decode %s: %w", kv.Key, err))
			return
		}
		if a.Validate {
			out = append(out, a)
		}
	}
	sdk.WriteJSON(w, http.StatusOK, out)
}

func (p *plugin) getApp(w http.ResponseWriter, r *http.Request, id string) {
	var app *App
	err := p.view(r.Context(), func(tx sdk.Tx) (err error) {
		app, err = liveApp(tx, id)
		return err
	})
	if err != nil {
		p.fail(w, r, err)
		return
	}
	sdk.WriteJSON(w, http.StatusOK, app)
}

func (p *plugin) createApp(w http.ResponseWriter, r *http.Request) {
	var in appInput
	if err := p.decode(r, &in); err != nil {
		p.fail(w, r, err)
		return
	}
	if in.Name == nil || in.Platforms == nil {
		p.fail(w, r, badRequest("name and platforms are required"))
		return
	}
	now := time.Now().UTC()
	a := App{ID: newID(), Name: *in.Name, Platforms: *in.Platforms, Created: now, Updated: now, Validate: true}
	if in.Forbidden != nil {
		a.Forbidden = *in.Forbidden
	}
	if err := firstErr(checkName("name", a.Name), checkPlatforms(a.Platforms)); err != nil {
		p.fail(w, r, err)
		return
	}
	err := p.store.Update(r.Context(), func(tx sdk.Tx) error { return putJSON(tx, kApp+a.ID, a) })
	if err != nil {
		p.fail(w, r, err)
		return
	}
	sdk.WriteJSON(w, http.StatusCreated, a)
}

func (p *plugin) updateApp(w http.ResponseWriter, r *http.Request, id string) {
	var in appInput
	if err := p.decode(r, &in); err != nil {
		p.fail(w, r, err)
		return
	}
	var out *App
	err := p.store.Update(r.Context(), func(tx sdk.Tx) error {
		a, err := liveApp(tx, id)
		if err != nil {
			return err
		}
		if err := in.check(id); err != nil {
			return err
		}
		if in.Name != nil {
			if err := checkName("name", *in.Name); err != nil {
				return err
			}
			a.Name = *in.Name
		}
		if in.Platforms != nil {
			if err := checkPlatforms(*in.Platforms); err != nil {
				return err
			}
			// A platform still used by a version or channel stays.
			for _, pf := range a.Platforms {
				if slices.Contains(*in.Platforms, pf) {
					continue
				}
				if n, err := countPlatform(tx, id, pf); err != nil {
					return err
				} else if n > 0 {
					return badRequest("platform %s is used by %d versions/channels of the app: delete them first", pf, n)
				}
			}
			a.Platforms = *in.Platforms
		}
		if in.Forbidden != nil {
			a.Forbidden = *in.Forbidden
		}
		a.Updated = time.Now().UTC()
		out = a
		return putJSON(tx, kApp+id, a)
	})
	if err != nil {
		p.fail(w, r, err)
		return
	}
	sdk.WriteJSON(w, http.StatusCreated, out)
}

func countPlatform(tx sdk.Tx, appID, platform string) (int, error) {
	n := 0
	for _, prefix := range []string{kVersion, kChannel} {
		kvs, err := tx.List(prefix + appID + "/")
		if err != nil {
			return 0, err
		}
		for _, kv := range kvs {
			var v struct{ Platform string }
			if json.Unmarshal(kv.Value, &v) == nil && v.Platform == platform {
				n++
			}
		}
	}
	return n, nil
}

// deleteApp is a soft delete: validate becomes false and the app disappears
// from lists and gets; its versions, channels and builds stay stored.
func (p *plugin) deleteApp(w http.ResponseWriter, r *http.Request, id string) {
	err := p.store.Update(r.Context(), func(tx sdk.Tx) error {
		a, err := liveApp(tx, id)
		if err != nil {
			return err
		}
		a.Validate = false
		a.Updated = time.Now().UTC()
		return putJSON(tx, kApp+id, a)
	})
	if err != nil {
		p.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// ---- versions and channels

type subKind struct {
	name, prefix string
}

var (
	versions = subKind{"version", kVersion}
	channels = subKind{"channel", kChannel}
)

func (p *plugin) listSub(w http.ResponseWriter, r *http.Request, k subKind, appID string) {
	var out any
	err := p.view(r.Context(), func(tx sdk.Tx) (err error) {
		if _, err := liveApp(tx, appID); err != nil {
			return err
		}
		if k == versions {
			out, err = listJSON[Version](tx, k.prefix+appID+"/")
		} else {
			out, err = listJSON[Channel](tx, k.prefix+appID+"/")
		}
		return err
	})
	if err != nil {
		p.fail(w, r, err)
		return
	}
	sdk.WriteJSON(w, http.StatusOK, out)
}

func (p *plugin) getSub(w http.ResponseWriter, r *http.Request, k subKind, appID, id string) {
	var out any
	err := p.view(r.Context(), func(tx sdk.Tx) error {
		if _, err := liveApp(tx, appID); err != nil {
			return err
		}
		b, err := getSubRaw(tx, k, appID, id)
		if err != nil {
			return err
		}
		// Decoded and written again, so records stored before a field was
		// added come out like new ones.
		if k == versions {
			out, err = decodeRecord[Version](b)
		} else {
			out, err = decodeRecord[Channel](b)
		}
		return err
	})
	if err != nil {
		p.fail(w, r, err)
		return
	}
	sdk.WriteJSON(w, http.StatusOK, out)
}

func getSubRaw(tx sdk.Tx, k subKind, appID, id string) ([]byte, error) {
	if !validID(id) {
		return nil, notFound("%s %q not found", k.name, id)
	}
	b, err := tx.Get(k.prefix + appID + "/" + id)
	if errors.Is(err, sdk.ErrNotFound) {
		return nil, notFound("%s %s not found in app %s", k.name, id, appID)
	}
	return b, err
}

// saveSub creates (id == "") or updates a version or channel.
func (p *plugin) saveSub(w http.ResponseWriter, r *http.Request, k subKind, appID, id string) {
	var vin versionInput
	var cin channelInput
	var err error
	if k == versions {
		err = p.decode(r, &vin)
	} else {
		err = p.decode(r, &cin)
	}
	if err != nil {
		p.fail(w, r, err)
		return
	}
	var out any
	err = p.store.Update(r.Context(), func(tx sdk.Tx) error {
		app, err := liveApp(tx, appID)
		if err != nil {
			return err
		}
		if id != "" {
			if _, err := getSubRaw(tx, k, appID, id); err != nil {
				return err
			}
		}
		if k == versions {
			out, err = saveVersion(tx, app, id, vin)
		} else {
			out, err = saveChannel(tx, app, id, cin)
		}
		return err
	})
	if err != nil {
		p.fail(w, r, err)
		return
	}
	sdk.WriteJSON(w, http.StatusCreated, out)
}

func resolvePlatform(app *App, f platformField, cur string) (string, error) {
	pf, err := f.get()
	if err != nil {
		return "", err
	}
	if pf == nil {
		if cur != "" {
			return cur, nil
		}
		if len(app.Platforms) == 1 {
			return app.Platforms[0], nil
		}
		return "", badRequest("platform is required (the app has several)")
	}
	if !validPlatform(*pf) {
		return "", badRequest("platform %q is not android or ios", *pf)
	}
	if !slices.Contains(app.Platforms, *pf) {
		return "", badRequest("platform %s is not one of the app's platforms %v", *pf, app.Platforms)
	}
	return *pf, nil
}

func saveVersion(tx sdk.Tx, app *App, id string, in versionInput) (*Version, error) {
	if err := in.check(id); err != nil {
		return nil, err
	}
	now := time.Now().UTC()
	v := Version{ID: newID(), AppID: app.ID, Created: now}
	if id != "" {
		if err := getJSON(tx, kVersion+app.ID+"/"+id, &v); err != nil {
			return nil, err
		}
	} else if in.Code == nil || in.Name == nil {
		return nil, badRequest("code and name are required")
	}
	pf, err := resolvePlatform(app, in.platformField, v.Platform)
	if err != nil {
		return nil, err
	}
	v.Platform = pf
	if in.Code != nil {
		v.Code = *in.Code
	}
	if in.Name != nil {
		v.Name = *in.Name
	}
	if in.GitTag != nil {
		v.GitTag = *in.GitTag
	}
	if in.GitIndex != nil {
		v.GitIndex = *in.GitIndex
	}
	if err := firstErr(checkName("code", v.Code), checkName("name", v.Name),
		checkRef("git_tag", v.GitTag), checkRef("git_index", v.GitIndex)); err != nil {
		return nil, err
	}
	others, err := listJSON[Version](tx, kVersion+app.ID+"/")
	if err != nil {
		return nil, err
	}
	for _, o := range others {
		if o.ID != v.ID && o.Code == v.Code && o.Platform == v.Platform {
			return nil, badRequest("version code %q already exists for %s in this app (version %s)", v.Code, v.Platform, o.ID)
		}
	}
	v.Updated = now
	return &v, putJSON(tx, kVersion+app.ID+"/"+v.ID, v)
}

// checkRef keeps git refs printable and free of newlines (they are passed
// to recipes as environment variables).
func checkRef(field, s string) error {
	if len(s) > 256 || strings.ContainsAny(s, "\x00\r\n") {
		return badRequest("%s must be at most 256 bytes without NUL or newlines", field)
	}
	return nil
}

func saveChannel(tx sdk.Tx, app *App, id string, in channelInput) (*Channel, error) {
	if err := in.check(id); err != nil {
		return nil, err
	}
	now := time.Now().UTC()
	c := Channel{ID: newID(), AppID: app.ID, Created: now}
	if id != "" {
		if err := getJSON(tx, kChannel+app.ID+"/"+id, &c); err != nil {
			return nil, err
		}
	} else if in.Code == nil || in.Name == nil {
		return nil, badRequest("code and name are required")
	}
	pf, err := resolvePlatform(app, in.platformField, c.Platform)
	if err != nil {
		return nil, err
	}
	c.Platform = pf
	if in.Code != nil {
		c.Code = *in.Code
	}
	if in.Name != nil {
		c.Name = *in.Name
	}
	if !codeRE.MatchString(c.Code) {
		return nil, badRequest("channel code %q must be 1-64 characters of A-Z a-z 0-9 . _ - starting with a letter or digit", c.Code)
	}
	if err := checkName("name", c.Name); err != nil {
		return nil, err
	}
	others, err := listJSON[Channel](tx, kChannel+app.ID+"/")
	if err != nil {
		return nil, err
	}
	for _, o := range others {
		if o.ID != c.ID && o.Code == c.Code {
			return nil, badRequest("channel code %q already exists in this app (channel %s)", c.Code, o.ID)
		}
	}
	c.Updated = now
	return &c, putJSON(tx, kChannel+app.ID+"/"+c.ID, c)
}

func (p *plugin) deleteSub(w http.ResponseWriter, r *http.Request, k subKind, appID, id string) {
	err := p.store.Update(r.Context(), func(tx sdk.Tx) error {
		if _, err := liveApp(tx, appID); err != nil {
			return err
		}
		if _, err := getSubRaw(tx, k, appID, id); err != nil {
			return err
		}
		return tx.Delete(k.prefix + appID + "/" + id)
	})
	if err != nil {
		p.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}
