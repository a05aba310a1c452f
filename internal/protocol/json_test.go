package protocol

import (
	"bytes"
	"encoding/json"
	"testing"
)

// FuzzJSONFastPath: the hand-written paths give exactly what
// encoding/json gives, for any input.
func FuzzJSONFastPath(f *testing.F) {
	for _, seed := range []string{
		`{"appid":"wx1","code":"c1"}`, `{"code":"c1"}`, `{"code":"c1","appid":"wx1"}`, `{"openid":"o1","unionid":"u1"}`,
		`{"openid":"o1"}`, `{"openid":"o1","unionid":"u1","token":"a.b.c","expires_in":7200}`, `{"openid":"o1","expires_in":"5"}`,
		`{"openid":"o1","token":7}`, `{"openid":"o1","expires_in":99999999999999999999}`, `{"code":"a\"b"}`, `{"Code":"x"}`, `{"code":"x","code":"y"}`, `{"code":1}`, `{}`, `{"code":"x",}`,
		`{"code":"<&>"}`, `{"code":"é"}`, `{"code":"x"} `, `[]`, ``,
	} {
		f.Add([]byte(seed), "wx1", "c1")
	}
	f.Fuzz(func(t *testing.T, data []byte, a, b string) {
		var fast, slow Request
		ef, es := decodeRequest(data, &fast), json.Unmarshal(data, &slow)
		if (ef == nil) != (es == nil) || (es == nil && fast != slow) {
			t.Fatalf("request %q: fast %+v %v, json %+v %v", data, fast, ef, slow, es)
		}
		var fr, sr Result
		ef, es = decodeResult(data, &fr), json.Unmarshal(data, &sr)
		if (ef == nil) != (es == nil) || (es == nil && fr != sr) {
			t.Fatalf("result %q: fast %+v %v, json %+v %v", data, fr, ef, sr, es)
		}
		for _, r := range []Request{{AppID: a, Code: b}, {Code: b}} {
			if got, want := EncodeRequest(r), marshal(r); !bytes.Equal(got, want) {
				t.Fatalf("EncodeRequest(%+v) = %s, json %s", r, got, want)
			}
		}
		for _, r := range []Result{{OpenID: a, UnionID: b}, {OpenID: a}, {OpenID: a, UnionID: b, Token: b + "." + a, ExpiresIn: 7200}, {OpenID: a, Token: a, ExpiresIn: -1}} {
			if got, want := EncodeResult(r), marshal(r); !bytes.Equal(got, want) {
				t.Fatalf("EncodeResult(%+v) = %s, json %s", r, got, want)
			}
		}
	})
}

func BenchmarkDecodeRequest(b *testing.B) {
	data := []byte(`{"appid":"wx1234567890abcdef","code":"0712cDoV0cfty22AeloV0daMoV02cDog"}`)
	b.ReportAllocs()
	for b.Loop() {
		var r Request
		decodeRequest(data, &r)
	}
}
