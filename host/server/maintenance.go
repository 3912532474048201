package server

import "time"

// maintainStore runs the store's background expiry: plugin KV keys past their TTL and conversations
// past their tenant's retention. It works in bounded steps and takes per-key locks only, so requests
// never wait for it.
func (s *Server) maintainStore(every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.expireOnce()
		}
	}
}

// expireOnce runs one expiry pass over every tenant.
func (s *Server) expireOnce() {
	st := s.acquire()
	defer st.release()
	now := s.now()
	for id, trt := range st.tenants {
		if _, err := s.store.SweepExpired(id); err != nil {
			s.log.Error("KV expiry failed", "tenant", id, "err", err)
		}
		cutoff := now.Add(-trt.limits.ConversationRetention)
		for {
			n, err := s.store.ExpireConversations(id, cutoff, 500)
			if err != nil {
				s.log.Error("conversation expiry failed", "tenant", id, "err", err)
				break
			}
			if n < 500 {
				break
			}
		}
	}
}
