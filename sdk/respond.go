package sdk

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
)

// DefaultMaxBody is the body limit DecodeJSON applies when given 0.
const DefaultMaxBody = 1 << 20

// WriteJSON writes v as JSON with the given status.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	if v == nil {
		return
	}
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v) // the client went away; nothing more to tell it
}

// Error is an error with the HTTP status it should be answered with.
type Error struct {
	Status int
	Msg    string
}

func (e *Error) Error() string { return e.Msg }

// Errorf builds an *Error.
func Errorf(status int, format string, args ...any) *Error {
	return &Error{Status: status, Msg: fmt.Sprintf(format, args...)}
}

// StatusOf returns the HTTP status for err: the Status of an *Error in its
// chain, else 500.
func StatusOf(err error) int {
	var e *Error
	if errors.As(err, &e) {
		return e.Status
	}
	return http.StatusInternalServerError
}

// WriteError answers {"error": "..."} with StatusOf(err).
func WriteError(w http.ResponseWriter, err error) {
	WriteJSON(w, StatusOf(err), map[string]string{"error": err.Error()})
}

// DecodeJSON decodes the request body into v strictly: at most maxBytes
// (DefaultMaxBody when 0), one JSON value, no unknown fields. Its errors are
// *Error with status 400 or 413 and a message naming the problem.
func DecodeJSON(r *http.Request, v any, maxBytes int64) error {
	if maxBytes <= 0 {
		maxBytes = DefaultMaxBody
	}
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, maxBytes))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var tooBig *http.MaxBytesError
		switch {
		case errors.As(err, &tooBig):
			return Errorf(http.StatusRequestEntityTooLarge, "body larger than %d bytes", maxBytes)
		case errors.Is(err, io.EOF):
			return Errorf(http.StatusBadRequest, "empty body: want a JSON object")
		default:
			return Errorf(http.StatusBadRequest, "invalid JSON body: %v", err)
		}
	}
	if dec.More() {
		return Errorf(http.StatusBadRequest, "invalid JSON body: more than one value")
	}
	return nil
}
