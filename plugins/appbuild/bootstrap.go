package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/plugd/plugd/sdk"
	"golang.org/x/crypto/bcrypt"
)

// The bootstrap user lets a fresh install be used at once (like Jenkins'
// initial admin password): with no users in the config, the first start
// creates the user "admin" with a random password, keeps only its bcrypt
// hash in the store and writes the password to a 0600 file in the data dir.
// Later starts (swaps, restarts) reuse the stored hash, so the password does
// not change. Configured users replace it: the hash and the file are removed.
const (
	bootstrapUser = "admin"
	// bootstrapFile is the password file's name in the plugin's data dir
	// (<data dir>/plugins/appbuild/initial-admin-password).
	bootstrapFile = "initial-admin-password"
	kBootstrap    = "bootstrap/admin" // bcrypt hash of the bootstrap password
)

// bootstrap returns the users to authenticate: the configured ones, or the
// bootstrap user when there are none.
func (p *plugin) bootstrap(ctx context.Context) ([]User, error) {
	path := filepath.Join(p.dataDir, bootstrapFile)
	log := p.h.Logger()
	if len(p.cfg.Users) > 0 {
		if _, err := p.store.Get(ctx, kBootstrap); err == nil {
			if err := p.store.Delete(ctx, kBootstrap); err != nil {
				return nil, fmt.Errorf("appbuild: removing the bootstrap user: %w", err)
			}
			log.Infof("users are configured: bootstrap user %q removed", bootstrapUser)
		}
		if err := os.Remove(path); err == nil {
			log.Infof("users are configured: removed %s", path)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("appbuild: %w", err)
		}
		return p.cfg.Users, nil
	}

	hash, err := p.store.Get(ctx, kBootstrap)
	switch {
	case err == nil:
		if _, err := os.Stat(path); err != nil {
			log.Warnf("no users configured: bootstrap user %q is active, but its password file %s is gone; "+
				"configure plugins.appbuild.users to replace it", bootstrapUser, path)
		} else {
			log.Warnf("no users configured: bootstrap user %q, password in %s; configure plugins.appbuild.users to replace it",
				bootstrapUser, path)
		}
	case errors.Is(err, sdk.ErrNotFound):
		pw, err := createPasswordFile(path)
		if err != nil {
			return nil, fmt.Errorf("appbuild: bootstrap user: %w", err)
		}
		mine, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.DefaultCost)
		if err != nil {
			return nil, fmt.Errorf("appbuild: bootstrap user: %w", err)
		}
		// Another instance starting at the same time read the same file
		// (createPasswordFile is exclusive), so either hash will do.
		err = p.store.Update(ctx, func(tx sdk.Tx) error {
			if old, err := tx.Get(kBootstrap); err == nil {
				hash = old
				return nil
			}
			hash = mine
			return tx.Put(kBootstrap, mine)
		})
		if err != nil {
			return nil, fmt.Errorf("appbuild: bootstrap user: %w", err)
		}
		log.Warnf("no users configured: created bootstrap user %q, its password is in %s (mode 0600); "+
			"configure plugins.appbuild.users to replace it", bootstrapUser, path)
	default:
		return nil, fmt.Errorf("appbuild: bootstrap user: %w", err)
	}
	if _, err := bcrypt.Cost(hash); err != nil {
		return nil, fmt.Errorf("appbuild: bootstrap user: stored hash is not bcrypt: %w", err)
	}
	return []User{{Name: bootstrapUser, PasswordBcrypt: string(hash)}}, nil
}

// createPasswordFile returns the password in path, creating the file with a
// new random password (mode 0600, complete or not at all) when it does not
// exist. Creation is exclusive: of two concurrent callers, both get the
// password of the one that created the file.
func createPasswordFile(path string) (string, error) {
	if pw, err := readPasswordFile(path); err == nil {
		return pw, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	f, err := os.CreateTemp(dir, "."+bootstrapFile+"-*") // mode 0600
	if err != nil {
		return "", err
	}
	defer os.Remove(f.Name())
	pw := rand.Text()
	if _, err := f.WriteString(pw + "\n"); err != nil {
		f.Close()
		return "", err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	if err := os.Link(f.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return readPasswordFile(path)
		}
		return "", err
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return pw, nil
}

func readPasswordFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	pw := strings.TrimSpace(string(b))
	if pw == "" {
		return "", fmt.Errorf("%s is empty: remove it to have a new password made", path)
	}
	return pw, nil
}
