package console

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"regexp"
	"strings"
	"time"

	"github.com/plugd/plugd/plugins/deploy/spec"
	"github.com/plugd/plugd/sdk"
)

// Store keys of the console.
const (
	pfxRepo  = "repo/"  // repo/<app> → Repo
	pfxMaint = "maint/" // maint/<app>/<user> → Maintainer
	pfxVer   = "ver/"   // ver/<app>/<meta_version> → Version
	pfxApp   = "app/"   // app/<app> → App (deployed)
	pfxOp    = "op/"    // op/<id> → Operation
)

// Roles of a maintainer.
const (
	RoleAdmin  = "admin"
	RoleNormal = "normal"
)

var appNameRe = regexp.MustCompile(`^[a-z][a-z0-9-]{0,62}(\.[a-z0-9][a-z0-9-]{0,62}){0,2}$`)

// Repo is a registered app.
type Repo struct {
	AppName   string    `json:"appname"`
	AppType   string    `json:"apptype"`
	Created   time.Time `json:"created"`
	CreatedBy string    `json:"created_by"`
}

// Maintainer is a user with a role on an app.
type Maintainer struct {
	AppName  string    `json:"appname"`
	Username string    `json:"username"`
	Role     string    `json:"role"`
	Added    time.Time `json:"added"`
}

// Version is a registered release of an app.
type Version struct {
	AppName     string    `json:"appname"`
	MetaVersion string    `json:"meta_version"`
	Spec        string    `json:"spec"`
	AppType     string    `json:"apptype"`
	Procs       []string  `json:"procs"`
	Files       []string  `json:"files"`
	Source      string    `json:"source"` // upload, path:..., url:...
	Dir         string    `json:"-"`
	Created     time.Time `json:"created"`
	CreatedBy   string    `json:"created_by"`
}

// ProcConf is the deployed configuration of one proc: the spec's values
// unless a PATCH overrode them.
type ProcConf struct {
	Deployed     bool     `json:"deployed"`
	NumInstances *int     `json:"num_instances,omitempty"`
	CPU          *float64 `json:"cpu,omitempty"`
	Memory       *int64   `json:"memory,omitempty"`
}

// App is a deployed app: what should run.
type App struct {
	AppName     string               `json:"appname"`
	AppType     string               `json:"apptype"`
	MetaVersion string               `json:"meta_version"` // the version that runs ("" until a deploy succeeds)
	Procs       map[string]*ProcConf `json:"procs"`
	// Resources are the resource instance apps this app made.
	Resources []string  `json:"resources,omitempty"`
	Created   time.Time `json:"created"`
	Updated   time.Time `json:"updated"`
	LastOp    string    `json:"last_operation,omitempty"`
}

func appType(name, specType string) string {
	if strings.HasPrefix(name, "resource.") {
		return spec.TypeResourceInstance
	}
	if specType == "" {
		return spec.TypeApp
	}
	return specType
}

func getJSON(ctx context.Context, st sdk.Store, key string, v any) error {
	b, err := st.Get(ctx, key)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

func txGet(tx sdk.Tx, key string, v any) error {
	b, err := tx.Get(key)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

func txPut(tx sdk.Tx, key string, v any, opts ...sdk.PutOption) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return tx.Put(key, b, opts...)
}

func (c *Console) repo(ctx context.Context, app string) (*Repo, error) {
	var r Repo
	if err := getJSON(ctx, c.h.Store(), pfxRepo+app, &r); err != nil {
		if errors.Is(err, sdk.ErrNotFound) {
			return nil, sdk.Errorf(http.StatusNotFound, "app %q is not registered", app)
		}
		return nil, err
	}
	return &r, nil
}

func (c *Console) app(ctx context.Context, name string) (*App, error) {
	var a App
	if err := getJSON(ctx, c.h.Store(), pfxApp+name, &a); err != nil {
		if errors.Is(err, sdk.ErrNotFound) {
			return nil, sdk.Errorf(http.StatusNotFound, "app %q is not deployed", name)
		}
		return nil, err
	}
	return &a, nil
}

func (c *Console) version(ctx context.Context, app, mv string) (*Version, error) {
	var v Version
	if err := getJSON(ctx, c.h.Store(), pfxVer+app+"/"+mv, &v); err != nil {
		if errors.Is(err, sdk.ErrNotFound) {
			return nil, sdk.Errorf(http.StatusNotFound, "app %q has no version %q", app, mv)
		}
		return nil, err
	}
	v.Dir = c.releaseDir(app, mv)
	return &v, nil
}

// latestVersion is the newest registered version of app.
func (c *Console) latestVersion(ctx context.Context, app string) (*Version, error) {
	kvs, err := c.h.Store().List(ctx, pfxVer+app+"/")
	if err != nil {
		return nil, err
	}
	var best *Version
	for _, kv := range kvs {
		var v Version
		if json.Unmarshal(kv.Value, &v) != nil {
			continue
		}
		if best == nil || v.Created.After(best.Created) {
			vv := v
			best = &vv
		}
	}
	if best == nil {
		return nil, sdk.Errorf(http.StatusConflict, "app %q has no registered version: POST /api/v1/repos/%s/versions/ first", app, app)
	}
	best.Dir = c.releaseDir(app, best.MetaVersion)
	return best, nil
}

func (c *Console) maintainers(ctx context.Context, app string) ([]Maintainer, error) {
	kvs, err := c.h.Store().List(ctx, pfxMaint+app+"/")
	if err != nil {
		return nil, err
	}
	out := []Maintainer{}
	for _, kv := range kvs {
		var m Maintainer
		if json.Unmarshal(kv.Value, &m) == nil {
			out = append(out, m)
		}
	}
	return out, nil
}
