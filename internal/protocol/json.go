package protocol

import (
	"encoding/json"
	"strconv"

	"github.com/wxlogin/wxlogin/internal/flatjson"
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
	b := make([]byte, 0, 64+len(r.OpenID)+len(r.UnionID)+len(r.Token))
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
	if r.Token != "" {
		b = append(b, `,"token":`...)
		if b = appendPlain(b, r.Token); b == nil {
			return marshal(r)
		}
	}
	if r.ExpiresIn != 0 {
		b = append(b, `,"expires_in":`...)
		b = strconv.AppendInt(b, r.ExpiresIn, 10)
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
	if appid, code, ok := flatPair(data, "appid", "code"); ok {
		r.AppID, r.Code = appid, code
		return nil
	}
	return json.Unmarshal(data, r)
}

// decodeResult is json.Unmarshal into a Result.
func decodeResult(data []byte, r *Result) error {
	if o, ok := flatjson.Parse(data); ok && o.Only("openid", "unionid", "token", "expires_in") {
		openid, ok1 := o.String("openid")
		unionid, ok2 := o.String("unionid")
		tok, ok3 := o.String("token")
		exp, ok4 := o.Int("expires_in")
		if ok1 && ok2 && ok3 && ok4 {
			r.OpenID, r.UnionID, r.Token, r.ExpiresIn = openid, unionid, tok, int64(exp)
			return nil
		}
	}
	return json.Unmarshal(data, r)
}

// flatPair reads data as a flat object of string values under the keys
// a and b, each at most once; ok is false for anything else.
func flatPair(data []byte, a, b string) (va, vb string, ok bool) {
	o, ok := flatjson.Parse(data)
	if !ok || !o.Only(a, b) {
		return "", "", false
	}
	va, okA := o.String(a)
	vb, okB := o.String(b)
	return va, vb, okA && okB
}
