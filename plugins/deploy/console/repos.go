package console

import (
	"errors"
	"net/http"
	"time"

	"github.com/julienschmidt/httprouter"
	"github.com/plugd/plugd/sdk"
)

func (c *Console) listRepos(w http.ResponseWriter, r *http.Request, _ httprouter.Params, _ *caller) error {
	kvs, err := c.h.Store().List(r.Context(), pfxRepo)
	if err != nil {
		return err
	}
	out := []Repo{}
	for _, kv := range kvs {
		var rp Repo
		if jsonUnmarshal(kv.Value, &rp) == nil {
			out = append(out, rp)
		}
	}
	sdk.WriteJSON(w, http.StatusOK, out)
	return nil
}

type repoView struct {
	Repo
	Maintainers []Maintainer `json:"maintainers"`
	Versions    []string     `json:"versions"`
	Deployed    bool         `json:"deployed"`
}

func (c *Console) repoView(r *http.Request, rp *Repo) (*repoView, error) {
	ms, err := c.maintainers(r.Context(), rp.AppName)
	if err != nil {
		return nil, err
	}
	v := &repoView{Repo: *rp, Maintainers: ms, Versions: []string{}}
	kvs, err := c.h.Store().List(r.Context(), pfxVer+rp.AppName+"/")
	if err != nil {
		return nil, err
	}
	for _, kv := range kvs {
		v.Versions = append(v.Versions, kv.Key[len(pfxVer+rp.AppName+"/"):])
	}
	if _, err := c.h.Store().Get(r.Context(), pfxApp+rp.AppName); err == nil {
		v.Deployed = true
	}
	return v, nil
}

func (c *Console) createRepo(w http.ResponseWriter, r *http.Request, _ httprouter.Params, u *caller) error {
	var req struct {
		AppName string `json:"appname"`
	}
	if err := sdk.DecodeJSON(r, &req, 0); err != nil {
		return err
	}
	rp, err := c.registerRepo(r, req.AppName, u.name, nil)
	if err != nil {
		return err
	}
	v, err := c.repoView(r, rp)
	if err != nil {
		return err
	}
	sdk.WriteJSON(w, http.StatusCreated, v)
	return nil
}

// registerRepo registers app with owner as its admin maintainer (plus
// extra maintainers, for resource instances).
func (c *Console) registerRepo(r *http.Request, app, owner string, extra []Maintainer) (*Repo, error) {
	if !appNameRe.MatchString(app) {
		return nil, sdk.Errorf(http.StatusBadRequest, "appname %q: want lower-case letters, digits and dashes (e.g. hello)", app)
	}
	now := time.Now().UTC()
	rp := &Repo{AppName: app, AppType: appType(app, ""), Created: now, CreatedBy: owner}
	err := c.h.Store().Update(r.Context(), func(tx sdk.Tx) error {
		if _, err := tx.Get(pfxRepo + app); err == nil {
			return sdk.Errorf(http.StatusConflict, "app %q is already registered", app)
		} else if !errors.Is(err, sdk.ErrNotFound) {
			return err
		}
		if err := txPut(tx, pfxRepo+app, rp); err != nil {
			return err
		}
		for _, m := range extra {
			m.AppName, m.Added = app, now
			if err := txPut(tx, pfxMaint+app+"/"+m.Username, &m); err != nil {
				return err
			}
		}
		return txPut(tx, pfxMaint+app+"/"+owner, &Maintainer{AppName: app, Username: owner, Role: RoleAdmin, Added: now})
	})
	if err != nil {
		return nil, err
	}
	return rp, nil
}

func (c *Console) getRepo(w http.ResponseWriter, r *http.Request, ps httprouter.Params, _ *caller) error {
	rp, err := c.repo(r.Context(), ps.ByName("app"))
	if err != nil {
		return err
	}
	v, err := c.repoView(r, rp)
	if err != nil {
		return err
	}
	sdk.WriteJSON(w, http.StatusOK, v)
	return nil
}

type roleView struct {
	AppName  string `json:"appname"`
	Username string `json:"username"`
	Role     string `json:"role"`
	// Admin is true for global admins (from the config).
	GlobalAdmin bool `json:"global_admin"`
}

func (c *Console) getMyRole(w http.ResponseWriter, r *http.Request, ps httprouter.Params, u *caller) error {
	app := ps.ByName("app")
	if _, err := c.repo(r.Context(), app); err != nil {
		return err
	}
	role := c.role(r.Context(), u, app)
	if role == "" {
		return sdk.Errorf(http.StatusNotFound, "user %q has no role on %q", u.name, app)
	}
	sdk.WriteJSON(w, http.StatusOK, roleView{AppName: app, Username: u.name, Role: role, GlobalAdmin: u.admin})
	return nil
}

func (c *Console) isGlobalAdmin(name string) bool {
	if !c.cfg.Auth {
		return name == "anonymous"
	}
	for _, a := range c.cfg.Admins {
		if a == name {
			return true
		}
	}
	return false
}

func (c *Console) getRole(w http.ResponseWriter, r *http.Request, ps httprouter.Params, _ *caller) error {
	app, name := ps.ByName("app"), ps.ByName("username")
	if _, err := c.repo(r.Context(), app); err != nil {
		return err
	}
	who := &caller{name: name, admin: c.isGlobalAdmin(name)}
	role := c.role(r.Context(), who, app)
	if role == "" {
		return sdk.Errorf(http.StatusNotFound, "user %q has no role on %q", name, app)
	}
	sdk.WriteJSON(w, http.StatusOK, roleView{AppName: app, Username: name, Role: role, GlobalAdmin: who.admin})
	return nil
}

func (c *Console) listMaintainers(w http.ResponseWriter, r *http.Request, ps httprouter.Params, _ *caller) error {
	app := ps.ByName("app")
	if _, err := c.repo(r.Context(), app); err != nil {
		return err
	}
	ms, err := c.maintainers(r.Context(), app)
	if err != nil {
		return err
	}
	sdk.WriteJSON(w, http.StatusOK, ms)
	return nil
}

func (c *Console) addMaintainer(w http.ResponseWriter, r *http.Request, ps httprouter.Params, u *caller) error {
	app := ps.ByName("app")
	if _, err := c.repo(r.Context(), app); err != nil {
		return err
	}
	if err := c.mayAdmin(r.Context(), u, app); err != nil {
		return err
	}
	var req struct {
		Username string `json:"username"`
		Role     string `json:"role"`
	}
	if err := sdk.DecodeJSON(r, &req, 0); err != nil {
		return err
	}
	if req.Role == "" {
		req.Role = RoleNormal
	}
	if req.Role != RoleAdmin && req.Role != RoleNormal {
		return sdk.Errorf(http.StatusBadRequest, "role %q: want admin or normal", req.Role)
	}
	if req.Username == "" || !c.knownUser(req.Username) {
		return sdk.Errorf(http.StatusBadRequest, "username %q is not a known user", req.Username)
	}
	m := Maintainer{AppName: app, Username: req.Username, Role: req.Role, Added: time.Now().UTC()}
	status := http.StatusCreated
	err := c.h.Store().Update(r.Context(), func(tx sdk.Tx) error {
		var old Maintainer
		if txGet(tx, pfxMaint+app+"/"+req.Username, &old) == nil {
			status = http.StatusOK
			m.Added = old.Added
			if old.Role == RoleAdmin && req.Role != RoleAdmin {
				if err := lastAdmin(tx, app, req.Username); err != nil {
					return err
				}
			}
		}
		return txPut(tx, pfxMaint+app+"/"+req.Username, &m)
	})
	if err != nil {
		return err
	}
	sdk.WriteJSON(w, status, m)
	return nil
}

// lastAdmin refuses to remove the last admin maintainer of app.
func lastAdmin(tx sdk.Tx, app, leaving string) error {
	kvs, err := tx.List(pfxMaint + app + "/")
	if err != nil {
		return err
	}
	for _, kv := range kvs {
		var m Maintainer
		if jsonUnmarshal(kv.Value, &m) == nil && m.Role == RoleAdmin && m.Username != leaving {
			return nil
		}
	}
	return sdk.Errorf(http.StatusConflict, "%q is the last admin of %q", leaving, app)
}

func (c *Console) getMaintainer(w http.ResponseWriter, r *http.Request, ps httprouter.Params, _ *caller) error {
	app, name := ps.ByName("app"), ps.ByName("username")
	if _, err := c.repo(r.Context(), app); err != nil {
		return err
	}
	var m Maintainer
	if err := getJSON(r.Context(), c.h.Store(), pfxMaint+app+"/"+name, &m); err != nil {
		if errors.Is(err, sdk.ErrNotFound) {
			return sdk.Errorf(http.StatusNotFound, "%q is not a maintainer of %q", name, app)
		}
		return err
	}
	sdk.WriteJSON(w, http.StatusOK, m)
	return nil
}

func (c *Console) deleteMaintainer(w http.ResponseWriter, r *http.Request, ps httprouter.Params, u *caller) error {
	app, name := ps.ByName("app"), ps.ByName("username")
	if _, err := c.repo(r.Context(), app); err != nil {
		return err
	}
	if err := c.mayAdmin(r.Context(), u, app); err != nil {
		return err
	}
	err := c.h.Store().Update(r.Context(), func(tx sdk.Tx) error {
		var m Maintainer
		if err := txGet(tx, pfxMaint+app+"/"+name, &m); err != nil {
			if errors.Is(err, sdk.ErrNotFound) {
				return sdk.Errorf(http.StatusNotFound, "%q is not a maintainer of %q", name, app)
			}
			return err
		}
		if m.Role == RoleAdmin {
			if err := lastAdmin(tx, app, name); err != nil {
				return err
			}
		}
		return tx.Delete(pfxMaint + app + "/" + name)
	})
	if err != nil {
		return err
	}
	sdk.WriteJSON(w, http.StatusOK, map[string]string{"message": "maintainer " + name + " removed from " + app})
	return nil
}
