from tortoise import BaseDBAsyncClient

RUN_IN_TRANSACTION = True


async def upgrade(db: BaseDBAsyncClient) -> str:
    return """
        CREATE TABLE IF NOT EXISTS "users" (
    "id" SERIAL NOT NULL PRIMARY KEY,
    "email" VARCHAR(320) NOT NULL UNIQUE,
    "name" VARCHAR(255) NOT NULL,
    "picture" VARCHAR(2048) NOT NULL,
    "google_sub" VARCHAR(255) UNIQUE,
    "google_access_token_enc" TEXT,
    "google_refresh_token_enc" TEXT,
    "google_token_expires_at" TIMESTAMPTZ,
    "google_scopes" TEXT NOT NULL,
    "created_at" TIMESTAMPTZ NOT NULL,
    "updated_at" TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS "conversations" (
    "id" UUID NOT NULL PRIMARY KEY,
    "title" VARCHAR(255) NOT NULL,
    "agent" VARCHAR(64) NOT NULL,
    "created_at" TIMESTAMPTZ NOT NULL,
    "updated_at" TIMESTAMPTZ NOT NULL,
    "user_id" INT NOT NULL REFERENCES "users" ("id") ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS "messages" (
    "id" BIGSERIAL NOT NULL PRIMARY KEY,
    "role" VARCHAR(16) NOT NULL,
    "content" TEXT NOT NULL,
    "tool_calls" JSONB,
    "tool_call_id" VARCHAR(255),
    "status" VARCHAR(16) NOT NULL,
    "created_at" TIMESTAMPTZ NOT NULL,
    "agent" VARCHAR(64),
    "conversation_id" UUID NOT NULL REFERENCES "conversations" ("id") ON DELETE CASCADE
);
COMMENT ON COLUMN "messages"."role" IS 'USER: user\nASSISTANT: assistant\nTOOL: tool\nSYSTEM: system';
COMMENT ON COLUMN "messages"."status" IS 'COMPLETE: complete\nPENDING: pending\nERROR: error';
CREATE TABLE IF NOT EXISTS "refresh_tokens" (
    "id" SERIAL NOT NULL PRIMARY KEY,
    "family_id" UUID NOT NULL,
    "token_hash" VARCHAR(64) NOT NULL UNIQUE,
    "expires_at" TIMESTAMPTZ NOT NULL,
    "used_at" TIMESTAMPTZ,
    "revoked_at" TIMESTAMPTZ,
    "created_at" TIMESTAMPTZ NOT NULL,
    "replaced_by_id" INT REFERENCES "refresh_tokens" ("id") ON DELETE SET NULL,
    "user_id" INT NOT NULL REFERENCES "users" ("id") ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS "idx_refresh_tok_family__59d0e5" ON "refresh_tokens" ("family_id");
CREATE TABLE IF NOT EXISTS "aerich" (
    "id" SERIAL NOT NULL PRIMARY KEY,
    "version" VARCHAR(255) NOT NULL,
    "app" VARCHAR(100) NOT NULL,
    "content" JSONB NOT NULL
);"""


async def downgrade(db: BaseDBAsyncClient) -> str:
    # Written by hand (aerich leaves the initial downgrade empty). The "aerich" table stays:
    # aerich deletes this version's row from it after running this SQL.
    return """
        DROP TABLE IF EXISTS "messages";
        DROP TABLE IF EXISTS "conversations";
        DROP TABLE IF EXISTS "refresh_tokens";
        DROP TABLE IF EXISTS "users";"""


MODELS_STATE = (
    "eJztnGtvozgUhv8K4tOM1K3SJE070WqltKWd7ORSJXR3drYr5IKToIJhwEwbdfvf13YgXG"
    "JooEmGsPkybW0fMM8xx8ev8byIpqVBwz2+tNAP6LgA6xYS28KLiIAJyS/c+iNBBLYd1tIC"
    "DB4MZqBGWrIa8OBiB6iYVE6A4UJSpEFXdXTbvxnyDIMWWippqKNpWOQh/bsHFWxNIZ5Bh1"
    "T8/Q8p1pEGn6Eb/Gk/KhMdGlqs37pG783KFTy3WdndXffqmrWkt3tQVMvwTBS2tud4ZqFl"
    "c8/TtWNqQ+umEEEHYKhFHoP20n/soGjRY1KAHQ8uu6qFBRqcAM+gMMRfJx5SKQOB3Yn+0/"
    "zN71qkmaIMhrIylmRFEXOwI36g3HWEKaiX18V1QyCsVKQ3uPzcGX1otD4yBJaLpw6rZLjE"
    "V2YIMFiYMughZaxj8vgroC9nwOGDXhokWJOuFqEcFISYwyG2BLgtpKIJnhUDoimekT/rp6"
    "cZjP/ojBhm0opxtsgbsXhfBn5VfVFHeYd8AQGC8/BdGuyQ7+Kixm4wt5prUG41UyHTqjhj"
    "1YGUiAI4oK9IDdZNyIcdt0wQ13zT4+CXbfEPQG4DPXlAbYiMuR+/MtDL3b40ljv9W3o703"
    "W/G4xfR5ZoTZ2VzhOlH1oJNy0vIvzZlT8L9E/h23AgJSPTsp38TaR9Ah62FGQ9KUCLhNqg"
    "NKAW87pnawW9Hrc8eL0sXg8YRdzu9z7idRc6Ci816CKc4u3QIuFqfRFo9825U9qJX+onzb"
    "PmeaPVPCdNWEeXJWcZ/u4OZBI9adI1eeQmBBTXKt1ry4H6FH2Bcwa5S3oEkMrLA/x0886/"
    "zJ7BfQ1GT1AaBiMHPC2z1OigIs9OnhjixbzeGV92riSREX4A6uMTcDQlBbUJXZdM9+4q7g"
    "vf8vrLCBrLlJ1Pur+4SoVgM3hW3YpAi+FcrTLrZrIEIAJF8+9N75TAxVkiRUimr46iTivP"
    "wuhCn6YGwHVjnz/O37cm2n7g+1SvNxpn9VqjdX7aPDs7Pa8tI+BqVVYovOje0GgYm8kW4f"
    "EoY8HkWGnrJQl55kp0jHkisN1dap/fHeLdWBq1BRrg7lFnPO6SCXsgtwXgujp9LHyP5OGw"
    "R1xvWcY9Gv81lqV+W3DnLoamWGA9cNJaYz1wkkw5wvUArUqsByyEuasuGT6nvCMRkwqsa7"
    "PyPemrHEv1ApAf+p2vH2PpXm84uAmaR8Bf9oYXCeB0KCgqMAzOVPb7eDhIURJiVsk0XFex"
    "8K9gkDG3Bn4/DJVsYuPxpziy+SdRJ3JoeoFU/tzMOEPLSdgVGvolY78DTYeEQexxhvp6k0"
    "BovcNIo1qmzXLUnJPB5bB/25NkqS0EV7hHt9Lgqju4aQs2RBpxxT2SRqMhmTOg41hOSaaA"
    "gyRUMXFgHUlox2JrqSPfFmTWyL4Qd6JJ353hmG5yq6a80/0bOzMZOoya2K97px6T3P7bT8"
    "Rv6jKcgZZXn9mm+DCCEzIAZrL1CLmbtLH6oywZwlm0VDBtWjIx4v+iRLxLgj3K0BgmwNSN"
    "ec4YGzPabnTdJev3bHtHV0jkNVFmwJ3lWx9FrTaTrv/cgbvlFAE+2zpxQoG0O25ZwbR7T9"
    "Jszh4cZ+vVLbbv6m5yXVWy7LtK/nXgDxL5irg4bnnwcpm9fNBI0ufJ6mokDrQNoBLnPfAT"
    "zNTkfdWw0OcUJXuhN5PKH75POXyfUiod5M3vU1JCwgbIJjWM/YoH6wJejYYxzqQbwuCu1/"
    "tZQhMb3hyBKRj26cISHTkHPalaehI0gW7kET6WBpXTPBr12hqiB2mVqnqwuvikz37mwBu0"
    "r8CnJjvYbrd1FXtOLsARk+oxrjXP14FMmqVTZpVxzFPLmhpQcb2HPKTjVhvZRi1RtNjKeP"
    "aRAVWFrrvYwFEgUlepp3+ulnGJKuxk7/r7NR9nbE+toEu41zj4pLBPfI6F9xUyLnNQJ8us"
    "TgYTi2rZvBMSb76IoWEFMoBdv3wHaTg9QaiuNHw4UVk1r6edqFzRV9c5rrby/0IUP7NW0a"
    "/REqpq8gut4rxyaqp7w2ubEmgHOro6EzkiqF9zlCWDgrDNQQfdWZTdsg5KYw73c9p0fSNi"
    "UuZTe2XSN+hLlYOw37yCdE9q62jNpFX6wZbaitacergx/aBd+uHGfKfsykZ7F8fscmRKm5"
    "/MXv8DiPxTtg=="
)
