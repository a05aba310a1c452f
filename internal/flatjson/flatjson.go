// Package flatjson reads the small JSON objects on wxlogin's hot path
// (requests, results and WeChat's answers) without reflection. It takes
// only the common shape: a flat object with no whitespace and no
// backslash, whose values are strings of printable ASCII or integers.
// For anything else it says no, and the caller uses encoding/json, so
// the outcome is encoding/json's either way; only the common case is
// fast.
package flatjson

import (
	"bytes"
	"strconv"
)

// MaxFields is the most keys an Object holds.
const MaxFields = 8

// Object is a parsed flat object: its keys and their raw values, in order.
type Object struct {
	n    int
	keys [MaxFields][]byte
	vals [MaxFields][]byte
	text [MaxFields]bool // the value was a string (else an integer)
}

// Parse reads data as {"k":"v","k2":-12,...}; ok is false for anything
// else, including more than MaxFields keys.
func Parse(data []byte) (o Object, ok bool) {
	if len(data) < 2 || data[0] != '{' || data[len(data)-1] != '}' || bytes.IndexByte(data, '\\') >= 0 {
		return o, false
	}
	p := data[1 : len(data)-1]
	for len(p) > 0 {
		if o.n == MaxFields {
			return o, false
		}
		var k, v []byte
		if k, p, ok = quoted(p); !ok || len(p) == 0 || p[0] != ':' {
			return o, false
		}
		p = p[1:]
		text := len(p) > 0 && p[0] == '"'
		if text {
			v, p, ok = quoted(p)
		} else {
			v, p, ok = integer(p)
		}
		if !ok {
			return o, false
		}
		o.keys[o.n], o.vals[o.n], o.text[o.n] = k, v, text
		o.n++
		if len(p) > 0 {
			if p[0] != ',' || len(p) == 1 {
				return o, false
			}
			p = p[1:]
		}
	}
	return o, true
}

// Only reports whether every key is one of keys, each at most once. With
// anything else the caller should fall back to encoding/json, which
// matches keys case-insensitively and lets the last duplicate win.
func (o *Object) Only(keys ...string) bool {
	for i := range o.n {
		k := string(o.keys[i])
		known := false
		for _, want := range keys {
			known = known || k == want
		}
		if !known {
			return false
		}
		for j := range i {
			if bytes.Equal(o.keys[j], o.keys[i]) {
				return false
			}
		}
	}
	return true
}

// String is key's string value, "" if key is absent; ok is false if the
// value is an integer.
func (o *Object) String(key string) (s string, ok bool) {
	i := o.find(key)
	if i < 0 {
		return "", true
	}
	return string(o.vals[i]), o.text[i]
}

// Int is key's integer value, 0 if key is absent; ok is false if the
// value is a string or does not fit an int.
func (o *Object) Int(key string) (n int, ok bool) {
	i := o.find(key)
	if i < 0 {
		return 0, true
	}
	if o.text[i] {
		return 0, false
	}
	n, err := strconv.Atoi(string(o.vals[i]))
	return n, err == nil
}

func (o *Object) find(key string) int {
	for i := range o.n {
		if string(o.keys[i]) == key {
			return i
		}
	}
	return -1
}

// quoted splits "s"rest into s and rest; s must be printable ASCII.
func quoted(p []byte) (s, rest []byte, ok bool) {
	if len(p) < 2 || p[0] != '"' {
		return nil, nil, false
	}
	end := bytes.IndexByte(p[1:], '"')
	if end < 0 {
		return nil, nil, false
	}
	s = p[1 : 1+end]
	for _, c := range s {
		if c < 0x20 || c > 0x7e {
			return nil, nil, false
		}
	}
	return s, p[2+end:], true
}

// integer splits -?(0|[1-9][0-9]*)rest, JSON's integers, into the number
// and rest.
func integer(p []byte) (n, rest []byte, ok bool) {
	i := 0
	if i < len(p) && p[i] == '-' {
		i++
	}
	digits := i
	for i < len(p) && p[i] >= '0' && p[i] <= '9' {
		i++
	}
	switch {
	case i == digits:
		return nil, nil, false // no digits
	case p[digits] == '0' && i > digits+1:
		return nil, nil, false // a leading zero
	}
	return p[:i], p[i:], true
}
