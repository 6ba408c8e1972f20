// Package limit builds a service's rate limiter (golang.org/x/time/rate)
// from the seed's rate_limiter config.
package limit

import (
	"math"
	"strconv"

	"github.com/plugd/plugd/plugins/gateway/conf"
	"golang.org/x/time/rate"
)

// New returns a token bucket filling at c.Rate tokens per second and
// holding c.Peak tokens, full at start; nil when c.Rate is 0 (unlimited).
// A Peak of 0 with a positive Rate means a bucket of ceil(Rate) tokens
// (a burst of zero would refuse every request).
func New(c conf.RateLimiter) *rate.Limiter {
	if c.Rate <= 0 {
		return nil
	}
	burst := c.Peak
	if burst <= 0 {
		burst = int(math.Ceil(c.Rate))
	}
	return rate.NewLimiter(rate.Limit(c.Rate), burst)
}

// RetryAfter is the Retry-After value (whole seconds, at least 1) for a
// request refused by l: the time until one token is back.
func RetryAfter(l *rate.Limiter) string {
	if l == nil || l.Limit() <= 0 {
		return "1"
	}
	s := math.Ceil(1 / float64(l.Limit()))
	if s < 1 {
		s = 1
	}
	return strconv.Itoa(int(s))
}
