package cloudsim

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// maxControlBody bounds a control request body.
const maxControlBody = 1 << 20

// ControlHandler returns the HTTP JSON API for the fault knobs and the
// recorder. Requests and replies are JSON; errors are {"error": "..."}
// with status 400 (bad request), 404, 405 or 409 (wrong state).
//
//	POST /refuse   {"code":3}        refuse device CONNECTs with this code (1-5)
//	POST /accept                     stop refusing
//	POST /drop                       close every non-observer connection → {"dropped":N}
//	POST /stall    {"on":true}       swallow publishes without PUBACK (false: stop)
//	POST /delay    {"ms":500}        delay every PUBACK (0: off)
//	POST /down                       close listeners and connections
//	POST /up                         listen again on the same addresses
//	POST /publish  {"productKey","deviceName","topic","payload","qos"}  downlink as the cloud
//	POST /rrpc     {"productKey","deviceName","topic","payload","timeoutMs"}  synchronous call
//	               (see Sim.RRPC) → {"messageId","requestTopic","topic","payload"}; 504
//	               when no reply came within timeoutMs (1-8000, default 8000)
//	GET  /stats                      counters and knobs
//	GET  /messages?since=SEQ&productKey=PK&deviceName=DN   recorded messages
//	GET  /devices                    registered devices (no secrets)
//
// It has no authentication: bind it to a loopback address.
func (s *Sim) ControlHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /refuse", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Code *int `json:"code"`
		}
		if !decodeBody(w, r, &req) {
			return
		}
		if req.Code == nil || *req.Code < 1 || *req.Code > 5 {
			writeError(w, http.StatusBadRequest, errors.New(`refuse: want {"code":N} with N in 1-5`))
			return
		}
		if err := s.Refuse(byte(*req.Code)); err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
		writeJSON(w, http.StatusOK, s.Knobs())
	})
	mux.HandleFunc("POST /accept", func(w http.ResponseWriter, r *http.Request) {
		if !decodeBody(w, r, nil) {
			return
		}
		s.Accept()
		writeJSON(w, http.StatusOK, s.Knobs())
	})
	mux.HandleFunc("POST /drop", func(w http.ResponseWriter, r *http.Request) {
		if !decodeBody(w, r, nil) {
			return
		}
		writeJSON(w, http.StatusOK, map[string]int{"dropped": s.Drop()})
	})
	mux.HandleFunc("POST /stall", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			On *bool `json:"on"`
		}
		if !decodeBody(w, r, &req) {
			return
		}
		if req.On == nil {
			writeError(w, http.StatusBadRequest, errors.New(`stall: want {"on":true|false}`))
			return
		}
		s.Stall(*req.On)
		writeJSON(w, http.StatusOK, s.Knobs())
	})
	mux.HandleFunc("POST /delay", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			MS *int64 `json:"ms"`
		}
		if !decodeBody(w, r, &req) {
			return
		}
		if req.MS == nil || *req.MS < 0 || *req.MS > int64(time.Hour/time.Millisecond) {
			writeError(w, http.StatusBadRequest, errors.New(`delay: want {"ms":N} with N in 0-3600000`))
			return
		}
		s.Delay(time.Duration(*req.MS) * time.Millisecond)
		writeJSON(w, http.StatusOK, s.Knobs())
	})
	mux.HandleFunc("POST /down", func(w http.ResponseWriter, r *http.Request) {
		if !decodeBody(w, r, nil) {
			return
		}
		if err := s.Down(); err != nil {
			writeError(w, http.StatusConflict, err)
			return
		}
		writeJSON(w, http.StatusOK, s.Knobs())
	})
	mux.HandleFunc("POST /up", func(w http.ResponseWriter, r *http.Request) {
		if !decodeBody(w, r, nil) {
			return
		}
		if err := s.Up(r.Context()); err != nil {
			writeError(w, http.StatusConflict, err)
			return
		}
		writeJSON(w, http.StatusOK, s.Knobs())
	})
	mux.HandleFunc("POST /publish", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			ProductKey string `json:"productKey"`
			DeviceName string `json:"deviceName"`
			Topic      string `json:"topic"`
			Payload    string `json:"payload"`
			QoS        byte   `json:"qos"`
		}
		if !decodeBody(w, r, &req) {
			return
		}
		if err := s.Publish(req.ProductKey, req.DeviceName, req.Topic, []byte(req.Payload), req.QoS); err != nil {
			status := http.StatusBadRequest
			if errors.Is(err, ErrDeviceOffline) || errors.Is(err, ErrNotSubscribed) || errors.Is(err, ErrNoExtRRPC) {
				status = http.StatusConflict
			}
			writeError(w, status, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]bool{"published": true})
	})
	mux.HandleFunc("POST /rrpc", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			ProductKey string `json:"productKey"`
			DeviceName string `json:"deviceName"`
			Topic      string `json:"topic"`
			Payload    string `json:"payload"`
			TimeoutMS  *int64 `json:"timeoutMs"`
		}
		if !decodeBody(w, r, &req) {
			return
		}
		timeout := MaxRRPCTimeout
		if req.TimeoutMS != nil {
			if *req.TimeoutMS < 1 || *req.TimeoutMS > MaxRRPCTimeout.Milliseconds() {
				writeError(w, http.StatusBadRequest, fmt.Errorf("rrpc: timeoutMs %d outside 1-%d", *req.TimeoutMS, MaxRRPCTimeout.Milliseconds()))
				return
			}
			timeout = time.Duration(*req.TimeoutMS) * time.Millisecond
		}
		reply, err := s.RRPC(r.Context(), req.ProductKey, req.DeviceName, req.Topic, []byte(req.Payload), timeout)
		if err != nil {
			status := http.StatusBadRequest
			switch {
			case errors.Is(err, ErrRRPCTimeout):
				status = http.StatusGatewayTimeout
			case errors.Is(err, ErrDeviceOffline), errors.Is(err, ErrNotSubscribed), errors.Is(err, ErrNoExtRRPC):
				status = http.StatusConflict
			}
			writeError(w, status, err)
			return
		}
		writeJSON(w, http.StatusOK, struct {
			RRPCReply
			Payload string `json:"payload"`
		}{reply, string(reply.Payload)})
	})
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, struct {
			Stats
			Knobs Knobs `json:"knobs"`
		}{s.Stats(), s.Knobs()})
	})
	mux.HandleFunc("GET /messages", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		var since uint64
		if v := q.Get("since"); v != "" {
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				writeError(w, http.StatusBadRequest, fmt.Errorf("messages: since %q is not a sequence number", v))
				return
			}
			since = n
		}
		pk, dn := q.Get("productKey"), q.Get("deviceName")
		out := []Record{}
		for _, rec := range s.Messages() {
			if rec.Seq <= since || (pk != "" && rec.Device.ProductKey != pk) || (dn != "" && rec.Device.DeviceName != dn) {
				continue
			}
			out = append(out, rec)
		}
		writeJSON(w, http.StatusOK, out)
	})
	mux.HandleFunc("GET /devices", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.Devices())
	})
	return mux
}

// decodeBody decodes a JSON body into v (strictly); with v == nil the body
// must be empty or an empty object. It answers 400 itself on failure.
func decodeBody(w http.ResponseWriter, r *http.Request, v any) bool {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxControlBody))
	if err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("read request body: %w", err))
		return false
	}
	trimmed := strings.TrimSpace(string(body))
	if v == nil {
		if trimmed == "" || trimmed == "{}" {
			return true
		}
		writeError(w, http.StatusBadRequest, errors.New("this request takes no body"))
		return false
	}
	if trimmed == "" {
		trimmed = "{}"
	}
	dec := json.NewDecoder(strings.NewReader(trimmed))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("decode request body: %w", err))
		return false
	}
	if dec.More() {
		writeError(w, http.StatusBadRequest, errors.New("decode request body: trailing data"))
		return false
	}
	return true
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, status int, err error) {
	writeJSON(w, status, map[string]string{"error": err.Error()})
}
