package protocol

import (
	"bytes"
	"encoding/json"
)

// Requests and results cross NATS and HTTP once or twice per exchange and
// are flat objects of short ASCII strings. encoding/json's reflection was a
// visible share of the pipeline's CPU (wxbench profile), so the canonical
// shapes are written and read by hand here; anything else (escapes,
// non-ASCII, other fields or order quirks) goes through encoding/json, so
// the results are the same, only cheaper for the common case.

// EncodeRequest is json.Marshal(r), faster for ordinary values.
func EncodeRequest(r Request) []byte {
	b := make([]byte, 0, 24+len(r.AppID)+len(r.Code))
	b = append(b, '{')
	if r.AppID != "" {
		b = append(b, `"appid":`...)
		if b = appendPlain(b, r.AppID); b == nil {
			return marshal(r)
		}
		b = append(b, ',')
	}
	b = append(b, `"code":`...)
	if b = appendPlain(b, r.Code); b == nil {
		return marshal(r)
	}
	return append(b, '}')
}

// EncodeResult is json.Marshal(r), faster for ordinary values.
func EncodeResult(r Result) []byte {
	b := make([]byte, 0, 32+len(r.OpenID)+len(r.UnionID))
	b = append(b, `{"openid":`...)
	if b = appendPlain(b, r.OpenID); b == nil {
		return marshal(r)
	}
	if r.UnionID != "" {
		b = append(b, `,"unionid":`...)
		if b = appendPlain(b, r.UnionID); b == nil {
			return marshal(r)
		}
	}
	return append(b, '}')
}

func marshal(v any) []byte {
	b, _ := json.Marshal(v)
	return b
}

// appendPlain appends s as a JSON string if it needs no escaping under
// encoding/json's rules (printable ASCII other than " \ < > &), else
// returns nil.
func appendPlain(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return nil
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// decodeRequest is json.Unmarshal into a Request.
func decodeRequest(data []byte, r *Request) error {
	if f, ok := flatStrings(data); ok && f.only("appid", "code") {
		r.AppID, r.Code = f.get("appid"), f.get("code")
		return nil
	}
	return json.Unmarshal(data, r)
}

// decodeResult is json.Unmarshal into a Result.
func decodeResult(data []byte, r *Result) error {
	if f, ok := flatStrings(data); ok && f.only("openid", "unionid") {
		r.OpenID, r.UnionID = f.get("openid"), f.get("unionid")
		return nil
	}
	return json.Unmarshal(data, r)
}

// fields are up to two key/value pairs of a flat object.
type fields struct {
	n          int
	keys, vals [2][]byte
}

// only reports whether every key is one of a or b, each at most once:
// with anything else (encoding/json matches keys case-insensitively, and
// the last duplicate wins) the caller falls back to encoding/json.
func (f *fields) only(a, b string) bool {
	for i := range f.n {
		k := string(f.keys[i])
		if k != a && k != b {
			return false
		}
	}
	return f.n < 2 || !bytes.Equal(f.keys[0], f.keys[1])
}

func (f *fields) get(key string) string {
	for i := range f.n {
		if string(f.keys[i]) == key {
			return string(f.vals[i])
		}
	}
	return ""
}

// flatStrings reads {"k":"v"} or {"k":"v","k2":"v2"} with no whitespace
// and no backslash anywhere; ok is false for anything else.
func flatStrings(data []byte) (f fields, ok bool) {
	if len(data) < 2 || data[0] != '{' || data[len(data)-1] != '}' || bytes.IndexByte(data, '\\') >= 0 {
		return f, false
	}
	p := data[1 : len(data)-1]
	for len(p) > 0 {
		if f.n == 2 {
			return f, false
		}
		var k, v []byte
		if k, p, ok = quoted(p); !ok || len(p) == 0 || p[0] != ':' {
			return f, false
		}
		if v, p, ok = quoted(p[1:]); !ok {
			return f, false
		}
		f.keys[f.n], f.vals[f.n] = k, v
		f.n++
		if len(p) > 0 {
			if p[0] != ',' || len(p) == 1 {
				return f, false
			}
			p = p[1:]
		}
	}
	return f, f.n > 0
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
